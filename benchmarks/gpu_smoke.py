"""GPU smoke run of a recipe: a few hundred steps through the real trainer, then throughput and peak memory.

Run it whenever a GPU is available, and after any change to the training hot path:

    python benchmarks/gpu_smoke.py                             # cifar10-resnet18, 300 steps, synthetic data
    python benchmarks/gpu_smoke.py --data cifar10 --download   # the real CIFAR-10 (needs the network once)
    python benchmarks/gpu_smoke.py --preset imagenet-resnet50 --batch-size 256 --data /data/imagenet/train

By default it trains on random ``uint8`` images of the recipe's size and count (CIFAR-10: 50,000 of 32 x 32 x 3),
so it needs neither the network nor a dataset: speed and memory do not depend on the pixel values. It prints
the median images/s after warm-up (the first ``--skip`` logged windows include compilation and cuDNN
autotuning), the time per epoch and for the recipe's full schedule at that rate, the peak GPU memory
(``torch.cuda.max_memory_allocated``), the FLOPs of a training step per image (counted by torch's flop
counter) and the FLOP rate they imply, and the loss terms at the end (they must be finite and falling). The
JSON line at the end is what to paste into benchmarks/README.md with the GPU's name and the date.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicreg.config import PRESETS, merge
from vicreg.train import train

# Images per epoch and image shape of each recipe's dataset, for the synthetic stand-in and the epoch time.
DATASETS = {"cifar10-resnet18": (50_000, (32, 32, 3)), "imagenet-resnet50": (1_281_167, (256, 256, 3))}
SYNTHETIC_ROWS = 10_000  # enough distinct images for a few hundred steps; the epoch time uses the real size


def synthetic_npz(path: Path, shape: tuple[int, int, int], rows: int) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, size=(rows, *shape), dtype=np.uint8))
    return path


def train_flops_per_image(cfg: Any, size: int, channels: int = 3, batch: int = 4) -> float:
    """FLOPs of one training step per image (two views, forward and backward, loss included), counted by
    ``torch.utils.flop_counter`` on a small CPU batch: convolutions and matmuls, not the element-wise ops."""
    from torch.utils.flop_counter import FlopCounterMode

    from vicreg.build import model_from_config
    from vicreg.loss import vicreg_loss

    model = model_from_config(cfg, channels)
    x = torch.randn(batch, channels, size, size)
    with FlopCounterMode(display=False) as counter:
        z_a, z_b = model(x, x.clone())
        vicreg_loss(z_a, z_b).loss.backward()
    return counter.get_total_flops() / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(DATASETS), default="cifar10-resnet18")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--skip", type=int, default=2, help="logged windows to skip as warm-up")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the recipe's")
    parser.add_argument("--data", default="", help="a dataset name or path; default: synthetic images")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=-1, help="-1: the recipe's")
    parser.add_argument("--rows", type=int, default=SYNTHETIC_ROWS, help="synthetic images to write")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or pass --device cpu for a dry run")

    images_per_epoch, shape = DATASETS[args.preset]
    preset = PRESETS[args.preset]
    flops = train_flops_per_image(preset, preset.views.size)
    overrides: dict[str, Any] = {
        "device": args.device,
        "max_steps": args.steps,
        "log_every": args.log_every,
        "diag_every": args.log_every * 1000,
        "ckpt_every": args.steps * 10,
        "knn_every": 0,
        "progress": False,
        "compile": args.compile,
        "download": args.download,
    }
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.workers >= 0:
        overrides["workers"] = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(synthetic_npz(Path(tmp) / "synthetic.npz", shape, args.rows))
        cfg = replace(merge(preset, overrides), data=data, out=Path(tmp) / "run")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result = train(cfg)
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r][args.skip :]
    if not rates:
        raise SystemExit(f"no timed window after the first {args.skip}: raise --steps or lower --log-every")
    rate = statistics.median(rates)
    epoch_s = images_per_epoch / rate
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    last = rows[-1]
    summary = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__,
        "batch_size": cfg.batch_size,
        "precision": cfg.precision,
        "compile": cfg.compile,
        "data": args.data or "synthetic",
        "steps": result.step,
        "images_per_s_median": round(rate, 1),
        "epoch_s": round(epoch_s, 1),
        "full_schedule_h": round(epoch_s * cfg.epochs / 3600, 2),
        "peak_gib": None if peak_gib is None else round(peak_gib, 2),
        "train_gflop_per_image": round(flops / 1e9, 2),
        "achieved_tflop_s": round(flops * rate / 1e12, 1),
        "final": {k: round(last[k], 4) for k in ("loss", "invariance", "variance", "covariance") if k in last},
    }
    peak = "-" if peak_gib is None else f"{peak_gib:.2f}"
    print(
        f"{args.preset} on {summary['device']}: {rate:.0f} images/s (median of {len(rates)} windows), "
        f"{epoch_s:.1f} s/epoch, {summary['full_schedule_h']} h for {cfg.epochs} epochs, peak {peak} GiB, "
        f"{flops * rate / 1e12:.1f} TFLOP/s ({flops / 1e9:.2f} GFLOP per image per step)"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
