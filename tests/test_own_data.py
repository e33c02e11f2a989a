"""Your own images, first run: ``vicreg train --data FOLDER --out RUN`` with no other flag (here plus a short length
and --device cpu) works on folders of unlabelled 28 px images, 64 px images and mixed-size photos; the view size
and the model follow from the data and the device, the header says what was chosen and which flag fixes it, a
resumed run keeps those choices, and ``vicreg eval`` on the unlabelled data gives the label-free measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import run_cli
from vicreg.build import choose_unset
from vicreg.config import ModelConfig, TrainConfig, ViewsConfig


def _folder(root: Path, sizes: list[tuple[int, int]], ext: str = "png", seed: int = 0) -> Path:
    """Unlabelled images of the given (width, height): smooth colour gradients plus noise, like tiny photos."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3)
        image = (base + 60 * np.sin(x[..., None] / rng.uniform(3, 9) + y[..., None] / rng.uniform(3, 9))) % 255
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"img_{i:03d}.{ext}")
    return root


def _train(data: Path, out: Path, *extra: str) -> str:
    got = run_cli("train", "--data", data, "--out", out, "--max-steps", "1", "--epochs", "1", "--device", "cpu", *extra)
    assert got.returncode == 0, got.stderr
    assert (out / "backbone.safetensors").is_file()
    return got.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "sizes", "ext", "size"),
    [
        ("28px", [(28, 28)] * 256, "png", 28),
        ("64px", [(64, 64)] * 256, "png", 64),
        ("photos", None, "jpg", None),
    ],
)
def test_train_on_a_folder_with_no_other_flag(tmp_path: Path, name: str, sizes, ext: str, size) -> None:
    if sizes is None:  # mixed-size photos, landscape and portrait: the views take the median shorter side
        rng = np.random.default_rng(1)
        sizes = [(int(w), int(h)) for w, h in rng.integers(40, 160, (256, 2))]
        size = int(np.median([min(s) for s in sizes]))
    data = _folder(tmp_path / name, sizes, ext)
    out = _train(data, tmp_path / "runs" / "mine")
    assert f"views.size {size} (the data's median shorter side; --views.size fixes it)" in out
    assert "model.backbone small_cnn (on a CPU; --model.backbone fixes it)" in out
    assert "model.expander 1024-1024-1024 (on a CPU;" in out
    stored = yaml.safe_load((tmp_path / "runs" / "mine" / "config.yaml").read_text())
    assert stored["views"]["size"] == size and stored["model"]["backbone"] == "small_cnn"


@pytest.mark.slow
def test_a_resumed_run_keeps_its_first_choices_and_eval_reports_label_free(tmp_path: Path) -> None:
    data = _folder(tmp_path / "png", [(28, 28)] * 256)
    run = tmp_path / "runs" / "mine"
    _train(data, run)
    out = _train(data, run, "--max-steps", "2")
    assert "views.size 28 (as when this run started (its config.yaml); --views.size fixes it)" in out
    assert "resuming from" in out
    got = run_cli("eval", run)
    assert got.returncode == 0, got.stderr
    assert "rankme" in got.stdout and "no labels" in got.stdout
    assert "Traceback" not in got.stderr


def test_flags_still_fix_what_they_give(tmp_path: Path) -> None:
    data = _folder(tmp_path / "png", [(28, 28)] * 256)
    out = _train(data, tmp_path / "run", "--views.size", "24", "--model.backbone", "small_cnn", "--model.width", "8")
    assert "chosen      views.size" not in out and "model.backbone small_cnn (" not in out
    assert "model.expander 1024-1024-1024 (on a CPU" in out  # the one left unset


def test_choices_follow_the_device_and_the_data() -> None:
    cfg, gpu_ = TrainConfig(out=Path("/nonexistent/run")), torch.device("cuda")
    gpu, chosen = choose_unset(cfg, torch.device("cuda"), [500, 300, 4000])
    assert gpu.views.size == 224 and gpu.model.backbone == "resnet18" and gpu.model.expander == "8192-8192-8192"
    assert gpu.model.small_images is False and any("kept within (16, 224)" in line for line in chosen)
    small, _ = choose_unset(cfg, torch.device("cuda"), [28, 28, 30])
    assert small.views.size == 28 and small.model.small_images is True
    tiny, _ = choose_unset(cfg, torch.device("cpu"), [6, 7, 9])
    assert tiny.views.size == 16 and tiny.model.backbone == "small_cnn"
    table, _ = choose_unset(TrainConfig(out=Path("/nonexistent"), modality="table"), torch.device("cpu"))
    assert table.model.backbone == "mlp" and table.views.size == 0
    given = ModelConfig(backbone="resnet18", small_images=False)
    fixed, chosen = choose_unset(TrainConfig(out=Path("/x"), views=ViewsConfig(size=40), model=given), gpu_, [28])
    assert fixed.views.size == 40 and fixed.model.backbone == "resnet18" and fixed.model.small_images is False
    assert not any(line.startswith(("views.size", "model.backbone")) for line in chosen)
