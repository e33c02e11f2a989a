"""Cost of multi-crop: one training step with M local crops against the same step with the pair alone (CPU).

The `fashion-mnist-cpu` preset's model and recipe (small_cnn width 32, 1024-1024-1024 expander, batch 256 of
28 px uint8 images, bf16 autocast, channels_last, LARS) with M = 0, 2, 4, 6 local crops of 14 px (crop scale
0.05-0.4). One step = the views (`ImageViews.multi`) + `VICReg.forward_multi` + `vicreg_multiview_loss` +
backward + optimiser step. The settings run in alternating order, round after round, so that load on a shared
machine hits them alike; the table gives the median step time over the rounds (each round: the median of
`--steps` steps after one warm-up step) and its ratio to M = 0.

    python benchmarks/multicrop.py --rounds 5 --steps 3 --threads 1

On a loaded shared machine use one thread: with two OpenMP threads competing for two busy cores a step of
the preset took 10x longer than with one (spinning threads waiting for each other).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from vicreg import ImageViews, VICReg, vicreg_multiview_loss
from vicreg.models import build_backbone
from vicreg.optim import build_optimizer


def make_step(local_crops: int, model: VICReg, opt: torch.optim.Optimizer, local_size: int):
    views = ImageViews(28, crop_scale=(0.2, 1.0), mean=(0.286,), std=(0.353,), local_crops=local_crops,
                       local_size=local_size)  # fmt: skip

    def step(images: torch.Tensor, generator: torch.Generator) -> None:
        globals_, locals_ = views.multi(images, generator=generator)
        globals_ = [v.contiguous(memory_format=torch.channels_last) for v in globals_]
        locals_ = [v.contiguous(memory_format=torch.channels_last) for v in locals_]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_g, z_l = model.forward_multi(globals_, locals_)
        loss = vicreg_multiview_loss(z_g, z_l, check_finite=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--local-size", type=int, default=14)
    parser.add_argument("--crops", type=int, nargs="+", default=[0, 2, 4, 6])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = VICReg(build_backbone("small_cnn", in_channels=1, width=32), "1024-1024-1024", feature_dim=256)
    model = model.to(memory_format=torch.channels_last).train()
    opt = build_optimizer("lars", model, lr=0.1, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 1, 28, 28), dtype=torch.uint8, generator=g)
    steps = {m: make_step(m, model, opt, args.local_size) for m in args.crops}
    times: dict[int, list[float]] = {m: [] for m in args.crops}

    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, cpu")
    print(f"# medians over {args.rounds} alternating rounds of {args.steps} steps (+1 warm-up each)")
    for r in range(args.rounds):
        order = args.crops if r % 2 == 0 else args.crops[::-1]
        for m in order:
            steps[m](images, g)  # warm-up: scratch buffers, oneDNN kernels for the new shapes
            per_step = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                steps[m](images, g)
                per_step.append(time.perf_counter() - t0)
            times[m].append(statistics.median(per_step))
    base = statistics.median(times[args.crops[0]])
    head = f"| local crops ({args.local_size} px) | step ms | rounds' range ms | ratio to M = {args.crops[0]}"
    print(head + " | images/s |")
    print("|---:|---:|---:|---:|---:|")
    for m in args.crops:
        t = statistics.median(times[m])
        spread = f"{1e3 * min(times[m]):.0f}-{1e3 * max(times[m]):.0f}"
        print(f"| {m} | {1e3 * t:.0f} | {spread} | {t / base:.2f} | {args.batch_size / t:.0f} |")


if __name__ == "__main__":
    main()
