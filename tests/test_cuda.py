"""The GPU path: the two GPU presets train, fp16 with the scaler, resume, and views equal to the CPU's.

Every test here is marked ``cuda`` and skipped without a CUDA device (tests/conftest.py). On a GPU machine:
``pytest -m cuda`` (or ``bash benchmarks/gpu_check.sh``, which also runs the GPU benchmarks). The training
tests use synthetic images written to a ``.npz`` (bright squares or bars on noise, two classes), so they need
neither the network nor a dataset; they take about a minute together on one recent GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vicreg import ImageViews
from vicreg.augment.images import apply_view, sample_view_params
from vicreg.checkpoint import load_checkpoint
from vicreg.config import PRESETS, TrainConfig, merge
from vicreg.train import train

pytestmark = pytest.mark.cuda


def _npz(path: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` RGB images ``(N, 3, size, size)`` uint8: a bright square or a bright bar at a random place on noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, 3, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    side = max(2, size // 4)
    for i in range(n):
        r, c = rng.integers(0, size - side, 2)
        colour = rng.integers(120, 256, 3, dtype=np.uint8)[:, None, None]
        if labels[i]:
            images[i, :, r : r + side, c : c + side] = colour
        else:
            images[i, :, r : r + max(1, side // 3), :] = colour
    np.savez(path, images=images, labels=labels)
    return path


def _gpu_config(preset: str, tmp_path: Path, *, rows: int, image: int, steps: int, **overrides: Any) -> TrainConfig:
    """The preset on synthetic data, on the GPU, for ``steps`` steps with a short warm-up (1/20 of the run)."""
    base = PRESETS[preset]
    batch = overrides.pop("batch_size", base.batch_size)
    steps_per_epoch = rows // batch
    epochs = max(1, math.ceil(steps / steps_per_epoch))
    cfg = merge(
        base,
        {
            "device": "cuda",
            "batch_size": batch,
            "epochs": epochs,
            "max_steps": steps,
            "log_every": max(1, steps // 20),
            "diag_every": steps,
            "ckpt_every": steps,
            "knn_every": 0,
            "eval_split": "",
            "progress": False,
            "download": False,
            "workers": 0,
            "optim": {"warmup_epochs": max(epochs / 20, 1 / steps_per_epoch)},
            **overrides,
        },
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = _npz(tmp_path / f"synthetic_{rows}x{image}.npz", rows, image)
    return replace(cfg, data=str(data), out=tmp_path / "run")


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _assert_finite_and_falling(losses: list[float]) -> None:
    """Every logged loss finite, and the mean of the last three windows under 95% of the first window's (on CPU,
    60 steps of the CIFAR-10 recipe at batch 32 on these images go from 26.6 to 22.3, i.e. 84%)."""
    assert len(losses) >= 6, losses
    assert all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-3:]) / 3 < 0.95 * losses[0], losses


# ------------------------------------------------------------------------------------------------ presets


def test_cifar10_resnet18_preset_trains_on_gpu(tmp_path: Path) -> None:
    """The recipe as it is (bf16, channels_last, batch 256), 300 steps."""
    cfg = _gpu_config("cifar10-resnet18", tmp_path, rows=2048, image=32, steps=300)
    result = train(cfg)
    assert result.step == 300
    _assert_finite_and_falling(_losses(result.run_dir))
    assert (result.run_dir / "backbone.safetensors").is_file()


def test_imagenet_resnet50_preset_trains_on_gpu_with_a_reduced_batch(tmp_path: Path) -> None:
    """ResNet-50 and the 8192-8192-8192 expander at 224 px, batch 64 instead of 2048, 200 steps."""
    cfg = _gpu_config("imagenet-resnet50", tmp_path, rows=1024, image=64, steps=200, batch_size=64)
    result = train(cfg)
    assert result.step == 200
    _assert_finite_and_falling(_losses(result.run_dir))


def test_fp16_with_the_gradient_scaler(tmp_path: Path) -> None:
    cfg = _gpu_config("cifar10-resnet18", tmp_path, rows=2048, image=32, steps=200, precision="fp16")
    result = train(cfg)
    _assert_finite_and_falling(_losses(result.run_dir))
    scaler = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["scaler"]
    assert scaler, "fp16 must run with an enabled GradScaler (its state is saved in the checkpoint)"
    assert math.isfinite(float(scaler["scale"])) and float(scaler["scale"]) > 0


# ------------------------------------------------------------------------------------------------ resume


def test_resume_on_gpu_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 steps == 8 steps, a fresh start from the checkpoint, 8 steps, in the preset's bf16 on the GPU.

    Tolerance: with cuDNN's deterministic kernels the two runs do the same arithmetic in the same order, so they
    should agree to float rounding; we allow rtol 1e-4 and atol 1e-5 per weight, and check that this is far
    below what the last 8 steps change (a missed or repeated step, a lost optimiser or scaler state or another
    view seed would show).
    """
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    full_cfg = _gpu_config("cifar10-resnet18", tmp_path / "a", rows=512, image=32, steps=16, batch_size=64)
    half_cfg = replace(full_cfg, out=tmp_path / "b" / "run", max_steps=8)  # the same schedule, stopped halfway
    full = train(full_cfg)
    train(half_cfg)
    halfway = load_checkpoint(half_cfg.out / "checkpoints" / "last.pt")
    assert halfway["step"] == 8
    resumed = train(replace(half_cfg, max_steps=16))
    assert full.step == resumed.step == 16
    wa = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)
    moved = max(
        float((wa[k].float() - halfway["model"][k].float()).abs().max()) for k in wa if wa[k].is_floating_point()
    )
    assert moved > 1e-3, "the last 8 steps must change the weights by far more than the tolerance"
    assert _losses(resumed.run_dir)[-1] == pytest.approx(_losses(full.run_dir)[-1], rel=1e-3)


# ------------------------------------------------------------------------------------------------ views


@pytest.mark.parametrize(("size", "n"), [(32, 64), (224, 16)])
def test_views_on_gpu_equal_views_on_cpu_for_the_same_parameters(size: int, n: int) -> None:
    """Parameters drawn once on the CPU, applied to the same images on both devices (ImageViews' two views)."""
    x = torch.randint(0, 256, (n, 3, size + 8, size + 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = ImageViews(size)
    for cfg in (views.view_a, views.view_b):
        params = sample_view_params(cfg, n, (size + 8, size + 8), torch.Generator().manual_seed(1))
        kwargs: dict[str, Any] = {"blur_kernel_size": views.blur_kernel_size, "interpolation": views.interpolation}
        cpu = apply_view(x.float().div(255), params, views.size, **kwargs)
        gpu = apply_view(x.cuda().float().div(255), params, views.size, **kwargs)
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape == (n, 3, size, size)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)
    # the whole call: a CPU generator draws the same parameters whatever the images' device
    a_cpu, b_cpu = views(x, generator=torch.Generator().manual_seed(2))
    a_gpu, b_gpu = views(x.cuda(), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a_gpu.cpu(), a_cpu, rtol=0, atol=1e-4)
    torch.testing.assert_close(b_gpu.cpu(), b_cpu, rtol=0, atol=1e-4)
