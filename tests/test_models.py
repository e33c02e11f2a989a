"""Backbones, the expander and the VICReg model."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torchvision
from torch import nn

from vicreg import Expander, VICReg, vicreg_loss
from vicreg.models import BACKBONES, SmallCNN, build_backbone, infer_feature_dim, parse_expander_spec


def images(n: int = 4, c: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(n * 100 + c + size))


def official_projector(spec: str) -> nn.Sequential:
    """The expander as the official code builds it, written out literally for comparison."""
    f = list(map(int, spec.split("-")))
    layers: list[nn.Module] = []
    for i in range(len(f) - 2):
        layers.append(nn.Linear(f[i], f[i + 1]))
        layers.append(nn.BatchNorm1d(f[i + 1]))
        layers.append(nn.ReLU(True))
    layers.append(nn.Linear(f[-2], f[-1], bias=False))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------- expander


@pytest.mark.parametrize("spec", ["16-32-8", "1024-1024-1024", "8", "5-5"])
def test_expander_matches_official_structure(spec: str) -> None:
    ours = Expander(12, spec)
    ref = official_projector(f"12-{spec}")
    assert [type(m) for m in ours] == [type(m) for m in ref]
    assert [getattr(m, "bias", "n/a") is not None for m in ours] == [getattr(m, "bias", "n/a") is not None for m in ref]
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in ref.state_dict().items()}
    assert isinstance(ours[-1], nn.Linear) and ours[-1].bias is None
    assert ours.in_features == 12 and ours.out_features == int(spec.split("-")[-1])
    # the official state dict loads as is
    ours.load_state_dict(ref.state_dict(), strict=True)


def test_parse_expander_spec() -> None:
    assert parse_expander_spec("8192-8192-8192") == (8192, 8192, 8192)
    assert parse_expander_spec(" 64-32 ") == (64, 32)
    assert parse_expander_spec([64, 32]) == (64, 32)


@pytest.mark.parametrize(
    "spec",
    ["8192-abc", "", "0-1", "64-", "-64", "64--64", "64 - 64", "1.5-2", "-", [], [64, 0], [True], [64.0]],
)
def test_bad_expander_spec_raises(spec: object) -> None:
    with pytest.raises(ValueError, match="expander spec"):
        parse_expander_spec(spec)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expander spec"):
        VICReg("small_cnn", expander=spec)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- gradients


def _randomise_norms(model: nn.Module) -> None:
    """Non-zero, non-unit BatchNorm scales so that zero-init residual branches do not hide gradients."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)


def _tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.BatchNorm1d(16), nn.ReLU())


GRADIENT_CASES = {
    "resnet18_small": lambda: VICReg("resnet18", "64-64", small_images=True),
    "resnet50": lambda: VICReg("resnet50", "32-16"),
    "small_cnn": lambda: VICReg("small_cnn", "64-64-32"),
    "custom_module": lambda: VICReg(_tiny_mlp(), "32-32"),
    "two_backbones": lambda: VICReg("resnet18", "64-32", small_images=True, backbone_b="small_cnn", expander_b="16-32"),
    "own_expander_b": lambda: VICReg("small_cnn", "64-32", expander_b="32"),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_every_parameter_receives_a_gradient(case: str) -> None:
    model = GRADIENT_CASES[case]()
    _randomise_norms(model)
    z_a, z_b = model(images(4), images(4, size=32) + 1)
    vicreg_loss(z_a, z_b).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        if p.ndim > 1:  # a bias followed by BatchNorm has an exactly-cancelling gradient; weights do not
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_every_parameter_receives_a_gradient_timm() -> None:
    pytest.importorskip("timm")
    model = VICReg("timm:resnet10t", "32-16", backbone_b=build_backbone("timm:resnet10t"))
    _randomise_norms(model)
    z_a, z_b = model(images(4), images(4) + 1)
    vicreg_loss(z_a, z_b).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------------------------------------- backbones


def test_small_images_stem_and_shapes() -> None:
    model = VICReg("resnet18", "64-16", small_images=True)
    conv1 = model.backbone.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(model.backbone.maxpool, nn.Identity)
    x = images(2)
    stem = model.backbone.relu(model.backbone.bn1(conv1(x)))
    assert stem.shape == (2, 64, 32, 32)  # full resolution kept for 32 px inputs
    assert model.embed(x).shape == (2, 512) and model(x).shape == (2, 16)
    assert model.feature_dim == 512 and model.embedding_dim == 16


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_resnet_feature_dims_and_default_stem(name: str, dim: int) -> None:
    backbone = build_backbone(name)
    assert backbone.conv1.kernel_size == (7, 7) and isinstance(backbone.maxpool, nn.MaxPool2d)
    assert isinstance(backbone.fc, nn.Identity)
    assert BACKBONES[name][1] == dim
    with torch.no_grad():
        assert backbone.eval()(images(2)).shape == (2, dim)


@pytest.mark.parametrize("small_images", [False, True])
def test_backbone_state_dict_loads_into_plain_torchvision(small_images: bool) -> None:
    model = VICReg("resnet18", "32", small_images=small_images)
    plain = torchvision.models.resnet18()
    plain.fc = nn.Identity()  # type: ignore[assignment]
    if small_images:
        plain.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        plain.maxpool = nn.Identity()  # type: ignore[assignment]
    plain.load_state_dict(model.backbone.state_dict(), strict=True)
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval().embed(x))


def test_resnet_zero_init_residual_as_official_and_overridable() -> None:
    default = build_backbone("resnet18")
    assert all(block.bn2.weight.abs().sum() == 0 for block in default.layer1)
    plain_init = build_backbone("resnet18", zero_init_residual=False)
    assert all((block.bn2.weight == 1).all() for block in plain_init.layer1)


@pytest.mark.parametrize("small_images", [False, True])
def test_in_channels_grayscale(small_images: bool) -> None:
    model = VICReg("resnet18", "16", small_images=small_images, in_channels=1)
    assert model.backbone.conv1.in_channels == 1
    assert model(images(2, c=1, size=28)).shape == (2, 16)
    cnn = VICReg("small_cnn", "16", in_channels=1)
    assert cnn(images(2, c=1, size=28)).shape == (2, 16)


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet7'.*resnet18.*small_cnn.*timm:"):
        VICReg("resnet7")
    with pytest.raises(TypeError, match=r"name or an nn\.Module"):
        VICReg(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("resnet18", in_channels=0)


def test_small_cnn_size_and_features() -> None:
    cnn = SmallCNN()
    n_params = sum(p.numel() for p in cnn.parameters())
    assert 0.5e6 <= n_params <= 2e6
    assert cnn.feature_dim == 256
    assert SmallCNN(width=8).feature_dim == 64
    for size in (28, 32, 96):
        assert cnn(images(2, size=size)).shape == (2, 256)
    with pytest.raises(ValueError, match="width"):
        SmallCNN(width=0)


def test_channels_last_input_gives_same_output() -> None:
    model = VICReg("small_cnn", "16").eval()
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x))


# ------------------------------------------------------------------------------------------- any module


def test_custom_module_feature_dim_inferred_without_side_effects() -> None:
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone[1].eval()  # a submodule in another mode than its parent keeps its mode
    stats = copy.deepcopy(backbone[1].state_dict())
    model = VICReg(backbone, "16")
    assert model.feature_dim == 8
    assert model.backbone is backbone
    assert backbone.training and not backbone[1].training and backbone[0].training
    for k, v in backbone[1].state_dict().items():
        torch.testing.assert_close(v, stats[k])


def test_custom_module_sample_input_and_feature_dim() -> None:
    mlp = nn.Sequential(nn.Linear(10, 24), nn.ReLU())  # tabular: fails on the default image-shaped input
    assert VICReg(mlp, "16", sample_input=torch.zeros(2, 10)).feature_dim == 24
    assert VICReg(mlp, "16", feature_dim=24).feature_dim == 24
    assert infer_feature_dim(mlp, torch.zeros(3, 10)) == 24
    with pytest.raises(ValueError, match="feature_dim="):
        VICReg(mlp, "16")
    with pytest.raises(ValueError, match="feature_dim must be a positive int"):
        VICReg(mlp, "16", feature_dim=0)
    with pytest.raises(ValueError, match="outputs 512"):
        VICReg("resnet18", "16", feature_dim=100)


def test_custom_module_must_return_2d() -> None:
    with pytest.raises(ValueError, match=r"2-D \(batch, features\).*\(2, 4, 30, 30\)"):
        VICReg(nn.Conv2d(3, 4, 3), "16")
    with pytest.raises(ValueError, match="2-D"):
        infer_feature_dim(nn.Identity(), (torch.zeros(2, 3),))  # type: ignore[arg-type]


def test_small_images_needs_a_named_backbone() -> None:
    with pytest.raises(ValueError, match="small_images"):
        VICReg(_tiny_mlp(), "16", small_images=True)
    # with one branch by name it applies to that one
    model = VICReg("resnet18", "16", small_images=True, backbone_b=_tiny_mlp())
    assert isinstance(model.backbone.maxpool, nn.Identity)


# ------------------------------------------------------------------------------------------- branches


def test_pair_forward_runs_views_separately_like_official() -> None:
    model = VICReg("small_cnn", "32-16")
    x_a, x_b = images(4), images(4) * 2 + 1
    ref = copy.deepcopy(model)
    z_a, z_b = model(x_a, x_b)
    # the official code calls the encoder once per view: BatchNorm statistics are per view, not over 2N
    torch.testing.assert_close(z_a, ref(x_a))
    torch.testing.assert_close(z_b, ref(x_b))
    torch.testing.assert_close(model(x_a), model.expand(x_a, "a"))
    assert not model.two_branches and model.backbone_b is None and model.expander_b is None


def test_second_branch_modules_and_embed() -> None:
    model = VICReg("small_cnn", "32-16", backbone_b=SmallCNN(width=4), expander_b="8-16")
    assert model.two_branches and model.feature_dim == 256 and model.feature_dim_b == 32
    model.eval()
    x = images(2)
    assert model.embed(x).shape == (2, 256) and model.embed(x, branch="b").shape == (2, 32)
    z_a, z_b = model(x, x)
    assert z_a.shape == z_b.shape == (2, 16)
    torch.testing.assert_close(z_b, model.expander_b(model.backbone_b(x)))  # type: ignore[misc]
    with pytest.raises(ValueError, match="branch must be 'a' or 'b'"):
        model.embed(x, branch="c")


def test_second_branch_defaults() -> None:
    own_backbone = VICReg("small_cnn", "32-16", backbone_b="small_cnn")
    assert own_backbone.expander_b is not None and own_backbone.expander_b is not own_backbone.expander
    assert own_backbone.expander_b.out_features == 16
    shared_backbone = VICReg("small_cnn", "32-16", expander_b="64-16")
    assert shared_backbone.backbone_b is None and shared_backbone.expander_b is not None
    x = images(2)
    shared_backbone.eval()
    torch.testing.assert_close(shared_backbone.embed(x, "b"), shared_backbone.embed(x, "a"))


def test_second_branch_validation() -> None:
    with pytest.raises(ValueError, match="same width"):
        VICReg("small_cnn", "32-16", backbone_b="small_cnn", expander_b="32-8")
    with pytest.raises(ValueError, match="feature_dim_b"):
        VICReg("small_cnn", "16", feature_dim_b=8)


# ------------------------------------------------------------------------------------------- timm


def test_timm_backbone_by_name() -> None:
    pytest.importorskip("timm")
    model = VICReg("timm:resnet10t", "16", in_channels=1)
    assert model.feature_dim == 512
    assert model(images(2, c=1)).shape == (2, 16)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_backbone("timm:not_a_model")
    with pytest.raises(ValueError, match="small_images"):
        build_backbone("timm:resnet10t", small_images=True)


def test_timm_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match="pip install timm"):
        VICReg("timm:resnet10t")
