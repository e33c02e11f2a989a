"""Training-step cost of the backbones and the optimiser step cost of LARS against SGD and AdamW.

Run: ``python benchmarks/models.py`` (add ``--repeats 5`` for a quick look). Prints a Markdown table.

1. One full VICReg training step (two views through the encoder and expander, loss, backward, LARS step) at
   32 px for each backbone, in images per second: the cost of choosing ``small_cnn`` over a ResNet on a CPU.
2. ``optimizer.step()`` alone on the parameters of a ResNet-18 with an expander, gradients fixed: what the
   LARS trust ratio costs over plain SGD with momentum (torch's own implementation) and AdamW.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from vicreg import VICReg, vicreg_loss
from vicreg.optim import build_optimizer


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, timed in rotation so that load on a shared machine hits
    all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def train_steps(batch: int, expander: str) -> tuple[dict[str, Callable[[], None]], dict[str, int]]:
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(batch, 3, 32, 32, generator=g)
    x_b = torch.randn(batch, 3, 32, 32, generator=g)
    steps, sizes = {}, {}
    for name in ("small_cnn", "resnet18", "resnet50"):
        model = VICReg(name, expander, small_images=True)
        opt = build_optimizer("lars", model, lr=0.1, weight_decay=1e-6)

        def step(model: VICReg = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            z_a, z_b = model(x_a, x_b)
            vicreg_loss(z_a, z_b).loss.backward()
            opt.step()

        steps[name] = step
        sizes[name] = sum(p.numel() for p in model.backbone.parameters())
    return steps, sizes


def optimizer_steps(expander: str) -> tuple[dict[str, Callable[[], object]], int]:
    model = VICReg("resnet18", expander, small_images=True)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    steps = {name: build_optimizer(name, model, lr=1e-4, weight_decay=1e-6).step for name in ("sgd", "lars", "adamw")}
    return steps, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--expander", default="1024-1024-1024")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, 32 px, "
        f"expander {args.expander}, median of {args.repeats}\n"
    )

    steps, sizes = train_steps(args.batch, args.expander)
    seconds = interleaved_medians(steps, args.repeats)
    print("| backbone (small_images=True) | backbone params | train step, s | pairs/s | speed vs resnet18 |")
    print("|---|---:|---:|---:|---:|")
    for name, sec in seconds.items():
        ratio = seconds["resnet18"] / sec
        print(f"| {name} | {sizes[name] / 1e6:.2f} M | {sec:.3f} | {args.batch / sec:.1f} | {ratio:.2f}x |")
    del steps

    opt_steps, n_params = optimizer_steps(args.expander)
    seconds = interleaved_medians(opt_steps, args.repeats)
    print(f"\n| optimizer.step() ({n_params / 1e6:.1f} M params: resnet18 + expander) | ms | time vs SGD |")
    print("|---|---:|---:|")
    for name, sec in seconds.items():
        print(f"| {name} | {sec * 1e3:.1f} | {sec / seconds['sgd']:.2f}x |")


if __name__ == "__main__":
    main()
