"""--model.init: start a backbone from a weights file, torchvision's or timm's weights; strict, with a short report.

No network: every weights file is written by the test, at the path the cache would hold it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import Tensor, nn

from vicreg.checkpoint import save_checkpoint
from vicreg.export import export_encoder
from vicreg.models import EncoderSpec, build_backbone
from vicreg.weights import load_initial_weights, load_strict, mismatch_report, read_state_dict


def images(n: int = 2, c: int = 3, size: int = 32) -> Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def features(net: nn.Module, x: Tensor) -> Tensor:
    return net.eval()(x)


def perturbed(net: nn.Module, seed: int = 1) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen) * 0.1)
    return net


# --------------------------------------------------------------------------------------------- mismatch report


def test_mismatch_report_against_a_naive_listing() -> None:
    model = {f"layer{i}.weight": (4, 4) for i in range(6)} | {"stem.weight": (8, 3, 3, 3)}
    state = {f"layer{i}.weight": torch.zeros(4, 4) for i in range(1, 6)}  # layer0 missing
    state |= {"stem.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}
    state |= {f"extra{i}": torch.zeros(1) for i in range(4)}
    report = mismatch_report(model, state).splitlines()
    assert report == [
        "1 missing: layer0.weight",
        "5 unexpected: fc.weight, extra0, extra1 (+2 more)",
        "1 mis-shaped: stem.weight [8, 3, 7, 7] vs model [8, 3, 3, 3]",
    ]
    assert mismatch_report(model, {k: torch.zeros(s) for k, s in model.items()}) == ""


def test_a_wrong_file_gives_a_short_report(tmp_path: Path) -> None:
    """resnet18 weights (and a stray projector) into resnet50: hundreds of keys differ; the error stays 4 lines."""
    path = tmp_path / "r18.safetensors"
    save_file(build_backbone("resnet18").state_dict() | {"projector.0.weight": torch.zeros(8, 512)}, path)
    with pytest.raises(ValueError) as info:
        load_initial_weights(build_backbone("resnet50"), str(path), backbone_name="resnet50")
    lines = str(info.value).splitlines()
    assert len(lines) == 4 and "do not fit the backbone ResNet" in lines[0]
    assert lines[1].startswith("  165 missing: layer1.0.conv3.weight, ") and lines[1].endswith("(+162 more)")
    assert lines[2] == "  1 unexpected: projector.0.weight"
    assert lines[3].startswith("  23 mis-shaped: layer1.0.conv1.weight [64, 64, 3, 3] vs model [64, 64, 1, 1], ")


def test_old_checkpoints_without_the_batchnorm_counter_load() -> None:
    source = perturbed(build_backbone("small_cnn", width=4))
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = build_backbone("small_cnn", width=4)
    load_strict(target, state, "an old checkpoint")
    assert torch.equal(features(target, images()), features(source, images()))


# --------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", "hf"])
def test_init_from_our_export_changes_the_starting_features(tmp_path: Path, suffix: str) -> None:
    spec = EncoderSpec("small_cnn", {"in_channels": 3, "width": 4}, 32, "image", (3, 32, 32), (0.5,) * 3, (0.2,) * 3)
    trained = perturbed(spec.build())
    out = export_encoder(trained.state_dict(), spec, tmp_path / ("enc" if suffix == "hf" else f"enc{suffix}")).path
    fresh = spec.build()
    before = features(fresh, images())
    described = load_initial_weights(fresh, str(out), backbone_name=spec.name)
    after = features(fresh, images())
    assert not torch.allclose(before, after)
    assert torch.equal(after, features(trained, images()))
    assert str(out) in described and "classifier" not in described


def test_torchvision_style_file_drops_the_head_and_says_so(tmp_path: Path) -> None:
    full = perturbed(torchvision.models.resnet18(num_classes=10))  # with its fc classifier
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(full.state_dict(), path)
    backbone = build_backbone("resnet18")
    described = load_initial_weights(backbone, str(path), backbone_name="resnet18")
    assert "dropped the classifier head (fc.weight, fc.bias)" in described
    full.fc = nn.Identity()
    assert torch.equal(features(backbone, images()), features(full, images()))


def test_containers_are_unwrapped(tmp_path: Path) -> None:
    """A {"state_dict": ...} training checkpoint with DDP's module. prefix, and a vicreg checkpoint."""
    source = perturbed(build_backbone("mlp", in_channels=5, width=8, depth=2))
    wrapped = tmp_path / "train.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    ours = save_checkpoint({"model": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "c.pt")
    x = torch.randn(4, 5)
    for path in (wrapped, ours):
        target = build_backbone("mlp", in_channels=5, width=8, depth=2)
        load_initial_weights(target, str(path), backbone_name="mlp")
        assert torch.equal(features(target, x), features(source, x))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="torchvision:<WeightsName> or timm"):
        load_initial_weights(build_backbone("resnet18"), str(tmp_path / "nope.pt"), backbone_name="resnet18")
    odd = tmp_path / "odd.pt"
    torch.save({"lr": 0.1, "names": ["a"]}, odd)
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        read_state_dict(odd)


# --------------------------------------------------------------------------------------------- torchvision


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch) -> Path:
    """An empty torch hub cache (as TORCH_HOME=tmp would give)."""
    saved = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(saved)


def test_torchvision_weights_from_the_hub_cache(hub_dir: Path) -> None:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    full = perturbed(torchvision.models.resnet18())
    cached = hub_dir / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    torch.save(full.state_dict(), cached)
    backbone = build_backbone("resnet18")
    described = load_initial_weights(backbone, "torchvision:ResNet18_Weights.IMAGENET1K_V1", backbone_name="resnet18")
    assert described.startswith(f"torchvision ResNet18_Weights.IMAGENET1K_V1 ({cached})")
    assert "dropped the classifier head (fc.weight, fc.bias)" in described
    full.fc = nn.Identity()
    assert torch.equal(features(backbone, images()), features(full, images()))


def test_torchvision_weights_absent_without_download(hub_dir: Path) -> None:
    expected = hub_dir / "checkpoints" / "resnet50-11ad3fa6.pth"
    with pytest.raises(FileNotFoundError, match="--download") as info:
        load_initial_weights(
            build_backbone("resnet50"), "torchvision:ResNet50_Weights.IMAGENET1K_V2", backbone_name="resnet50"
        )
    assert str(expected) in str(info.value) and len(str(info.value).splitlines()) == 1


def test_torchvision_weight_names_are_checked(hub_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown torchvision weights"):
        load_initial_weights(build_backbone("resnet18"), "torchvision:ResNet18_Weights.NOPE", backbone_name="resnet18")
    with pytest.raises(ValueError, match=r"another architecture than the backbone 'resnet18': use ResNet18_Weights"):
        load_initial_weights(
            build_backbone("resnet18"), "torchvision:ResNet50_Weights.IMAGENET1K_V2", backbone_name="resnet18"
        )


def test_torchvision_weights_into_a_small_images_stem_report_the_stem(hub_dir: Path) -> None:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = hub_dir / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    with pytest.raises(ValueError, match=r"1 mis-shaped: conv1.weight \[64, 3, 7, 7\] vs model \[64, 3, 3, 3\]"):
        load_initial_weights(
            build_backbone("resnet18", small_images=True), f"torchvision:{weights}", backbone_name="resnet18"
        )


# --------------------------------------------------------------------------------------------- timm


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf"


def test_timm_weights_absent_offline(hf_cache: Path) -> None:
    pytest.importorskip("timm")
    import huggingface_hub.constants

    offline_before = huggingface_hub.constants.HF_HUB_OFFLINE
    backbone = build_backbone("timm:test_resnet")
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache; add --download") as info:
        load_initial_weights(backbone, "timm", backbone_name="timm:test_resnet")
    assert len(str(info.value).splitlines()) == 1
    assert offline_before == huggingface_hub.constants.HF_HUB_OFFLINE and "HF_HUB_OFFLINE" not in os.environ


def test_timm_weights_from_the_hf_cache(hf_cache: Path) -> None:
    """The hub cache layout (refs/main -> snapshots/<commit>/model.safetensors) read offline."""
    timm = pytest.importorskip("timm")
    reference = perturbed(timm.create_model("test_resnet", num_classes=1000))
    repo = reference.pretrained_cfg["hf_hub_id"]
    folder = hf_cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    save_file(reference.state_dict(), folder / "snapshots" / commit / "model.safetensors")
    backbone = build_backbone("timm:test_resnet")
    described = load_initial_weights(backbone, "timm", backbone_name="timm:test_resnet")
    assert described.startswith(f"timm test_resnet pretrained weights ({repo}: {folder}/snapshots/{commit}")
    reference.reset_classifier(0)
    assert torch.equal(features(backbone, images()), features(reference, images()))


def test_timm_init_needs_a_timm_backbone() -> None:
    with pytest.raises(ValueError, match="loads timm's pretrained weights for a timm:<name> backbone, not 'resnet18'"):
        load_initial_weights(build_backbone("resnet18"), "timm", backbone_name="resnet18")
