"""Where one training step of the `fashion-mnist-cpu` preset's model spends its time (torch.profiler, CPU).

A bare step of the preset's network (small_cnn width 32, 1024-1024-1024 expander, batch 256 of 28 px views,
bf16 autocast, channels_last, the VICReg loss in float32, SGD): no views or logging, so the table shows the
arithmetic that bounds the step. Prints the operators by self time, summed over the profiled steps.

    python benchmarks/profile_step.py --steps 5
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from vicreg.loss import vicreg_loss
from vicreg.models import VICReg, build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", in_channels=1, width=32)
    model = VICReg(backbone, "1024-1024-1024", sample_input=torch.zeros(2, 1, 28, 28))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    views = [torch.randn(args.batch_size, 1, 28, 28).to(memory_format=torch.channels_last) for _ in range(2)]

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_a, z_b = model(*views)
        loss = vicreg_loss(z_a.float(), z_b.float()).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: oneDNN picks its kernels
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.steps} steps, {total / 1e3 / args.steps:.0f} ms of operator time per step")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.rows]:
        print(f"{100 * e.self_cpu_time_total / total:5.1f}%  {e.key}")


if __name__ == "__main__":
    main()
