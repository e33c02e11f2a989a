"""Training throughput of `vicreg.train.train` against the model's bare forward+backward on the same batches.

For each configuration, in alternating rounds within one process:

* ``train``: a real run of ``train(cfg)`` (views, model, loss, LARS, logging, checkpointing at the end), timed
  from the ``images_per_s`` of its ``metrics.jsonl`` windows after the first (the first holds the warm-up);
* ``ceiling``: the same model's forward and backward on two already-augmented views of a batch of the same size,
  with the run's precision and memory format (nothing else: no views, no loss, no optimiser);
  ``ceiling-backbone`` does the same without the expander.

Our overhead is ``1 - train / ceiling``. Run from the repository root:

    python benchmarks/train.py                 # fashion-mnist-cpu preset and resnet18 at 32 px, on the CPU
    python benchmarks/train.py --device cuda --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vicreg.build import model_from_config
from vicreg.config import PRESETS, ModelConfig, TrainConfig, ViewsConfig
from vicreg.data import DEBIAN_FASHION_MNIST
from vicreg.train import train


def _synthetic(path: Path, n: int, channels: int, size: int) -> str:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8))
    return str(path)


def configs(tmp: Path, device: str, steps: int) -> dict[str, TrainConfig]:
    fm = PRESETS["fashion-mnist-cpu"]
    fm_data = "fashion-mnist" if DEBIAN_FASHION_MNIST.is_dir() else _synthetic(tmp / "fm.npz", 4096, 1, 28)
    common = dict(device=device, max_steps=steps, log_every=max(1, steps // 4), knn_every=0, progress=False)
    return {
        "fashion-mnist-cpu (small_cnn, 28 px, batch 256)": replace(fm, data=fm_data, **common),
        "resnet18, 32 px, batch 64, expander 2048-2048-2048": TrainConfig(
            data=_synthetic(tmp / "c.npz", 1024, 3, 32),
            batch_size=64,
            views=ViewsConfig(size=32),
            model=ModelConfig(backbone="resnet18", expander="2048-2048-2048", small_images=True),
            **common,
        ),
    }


def train_rate(cfg: TrainConfig) -> float:
    result = train(cfg)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r][1:]  # skip the warm-up window
    return statistics.median(rates)


def ceiling_rate(cfg: TrainConfig, channels: int, steps: int, backbone_only: bool) -> float:
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    model = model_from_config(cfg, channels).to(device).train()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    net = model.backbone if backbone_only else model
    s = cfg.views.size
    v_a = torch.randn(cfg.batch_size, channels, s, s, device=device).contiguous(memory_format=fmt)
    v_b = torch.randn(cfg.batch_size, channels, s, s, device=device).contiguous(memory_format=fmt)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(v_a).float().sum() + net(v_b).float().sum()
        out.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return cfg.batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration")
    parser.add_argument("--steps", type=int, default=8, help="training steps per round")
    args = parser.parse_args()

    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.device}")
    print(f"# medians over {args.rounds} alternating rounds of {args.steps} steps; images/s = input images per second")
    print(
        "| configuration | train img/s | model fwd+bwd img/s | train / model "
        "| backbone fwd+bwd img/s | train / backbone |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name, cfg in configs(tmp, args.device, args.steps).items():
            channels = 1 if "fashion" in name else 3
            rates: dict[str, list[float]] = {"train": [], "model": [], "backbone": []}
            for r in range(args.rounds):
                rates["train"].append(train_rate(replace(cfg, out=tmp / f"{len(rates['train'])}-{r}-{hash(name)}")))
                rates["model"].append(ceiling_rate(cfg, channels, args.steps, backbone_only=False))
                rates["backbone"].append(ceiling_rate(cfg, channels, args.steps, backbone_only=True))
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(
                f"| {name} | {med['train']:.0f} | {med['model']:.0f} | {med['train'] / med['model']:.2f} | "
                f"{med['backbone']:.0f} | {med['train'] / med['backbone']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
