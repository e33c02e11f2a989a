"""vicreg.load_backbone: a run folder, its backbone.safetensors, every export but onnx, a training checkpoint and a
run written before backbone files carried their description all give the same module with identical features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

import vicreg
from tests.helpers import TinyRuns, run_cli
from vicreg.backbone import load_backbone
from vicreg.build import load_encoder
from vicreg.checkpoint import CheckpointError, read_backbone_spec

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"


@pytest.fixture
def run(tiny_runs: TinyRuns) -> Path:
    """The session's tiny image run (small CNN, 16 px images), read only."""
    return tiny_runs.path("image")


def batch(module: nn.Module, n: int = 5) -> Tensor:
    return torch.randn(n, *module.vicreg_input_shape, generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def features(module: nn.Module, x: Tensor) -> Tensor:
    assert not module.training
    return module(x)


def assert_same_backbone(got: nn.Module, expected: nn.Module) -> None:
    assert got.vicreg_spec == expected.vicreg_spec
    assert got.vicreg_normalize == expected.vicreg_normalize
    x = batch(expected)
    assert torch.equal(features(got, x), features(expected, x))


def test_a_run_folder_and_every_backbone_file_give_the_same_module(run: Path, tmp_path: Path) -> None:
    from_run = vicreg.load_backbone(run)
    stored = load_encoder(run)
    assert read_backbone_spec(run / "backbone.safetensors") == stored.spec  # the run's file carries it
    assert from_run.vicreg_spec == stored.spec and from_run.vicreg_input_shape == (1, 16, 16)
    x = batch(from_run)
    assert torch.equal(features(from_run, x), features(stored.model.backbone, x))
    sources = [run / "backbone.safetensors", run / "checkpoints" / "last.pt"]
    for name in ("enc.safetensors", "enc.pt", "enc-hf"):
        result = run_cli("export", str(run), "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        sources.append(tmp_path / name)
    for source in sources:
        assert_same_backbone(vicreg.load_backbone(source), from_run)
    assert not list(tmp_path.glob(".*"))  # nothing left over by the checked writes


def test_a_pt_export_is_a_plain_state_dict_that_loads_into_the_architecture(run: Path, tmp_path: Path) -> None:
    assert run_cli("export", str(run), "--out", str(tmp_path / "enc.pt")).returncode == 0
    module = vicreg.load_backbone(run)
    fresh = module.vicreg_spec.build().eval()
    fresh.load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True), strict=True)
    x = batch(module)
    assert torch.equal(features(fresh, x), features(module, x))


@pytest.mark.parametrize("name", ["image", "table"])
def test_a_run_written_before_backbones_carried_their_description(name: str, tmp_path: Path) -> None:
    """tests/fixtures/legacy: checkpoints of vicreg 0.1.0 (no encoder description in them either); with and
    without the old backbone.safetensors beside them, the run folder and that file load through its config."""
    folder = tmp_path / "old"
    shutil.copytree(LEGACY / name, folder / "checkpoints")
    enc = load_encoder(folder)
    expected = vicreg.load_backbone(folder)  # no backbone file: the newest checkpoint
    assert expected.vicreg_spec == enc.spec and expected.vicreg_spec.kind == name
    x = batch(expected)
    assert torch.equal(features(expected, x), features(enc.model.backbone, x))
    old = {k: v.contiguous() for k, v in enc.model.backbone.state_dict().items()}
    save_file(old, folder / "backbone.safetensors", metadata={"format": "vicreg-backbone"})  # as 0.1.0 wrote it
    assert read_backbone_spec(folder / "backbone.safetensors") is None
    for source in (folder, folder / "backbone.safetensors"):
        assert_same_backbone(vicreg.load_backbone(source), expected)
    if name == "image":  # the fixture's own images, normalised as the spec says
        images = torch.from_numpy(np.load(LEGACY / "img.npz")["images"][:4]).float() / 255
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in expected.vicreg_normalize.values())
        assert torch.isfinite(features(expected, (images - mean) / std)).all()


def test_what_is_not_a_backbone_gives_a_one_line_error(run: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "notes.safetensors"
    garbage.write_text("not weights")
    other = tmp_path / "other.pt"
    torch.save({"step": 3, "lr": 0.1}, other)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    cases = [
        (garbage, CheckpointError, "truncated or not a backbone file"),
        (other, CheckpointError, "not a backbone file: it holds step, lr"),
        (foreign, CheckpointError, "does not say which architecture it holds"),
        (tmp_path / "missing.pt", FileNotFoundError, "no backbone at"),
        (tmp_path / "empty", CheckpointError, "without checkpoints/last.pt"),
    ]
    (tmp_path / "empty").mkdir()
    for path, error, words in cases:
        with pytest.raises(error, match=words) as err:
            vicreg.load_backbone(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_load_backbone_is_the_public_name() -> None:
    assert vicreg.load_backbone is load_backbone
