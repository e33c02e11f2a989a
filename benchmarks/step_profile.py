"""How close the `fashion-mnist-cpu` preset's step comes to this CPU's matrix-multiply peak, and what was tried.

Measures, in one process and at one thread count (``--threads``, default torch's):

* the GEMM peak: a 2048x2048 matmul in bf16 and in fp32 (GFLOP/s, median of ``--rounds``);
* the preset's bare step (both views forward + backward under bf16 autocast, channels_last): its GFLOP by
  ``torch.utils.flop_counter.FlopCounterMode``, its time, hence GFLOP/s and the fraction of the bf16 peak;
* the operators by self time (``torch.profiler``), each with its GFLOP/s where the profiler counts FLOPs
  (matmul, convolution), to show which run below the GEMM rate;
* variants side by side, in alternating rounds (medians): the preset's step, contiguous memory format, fp32,
  batch 128, ``torch.compile`` (inductor's CPU backend; its compile time stated), and the whole training step
  (LARS and the VICReg loss added);
* the ResNet-18 recipe's (``cifar10-resnet18``) bare step at ``--resnet-batch`` for its utilisation.

    python benchmarks/step_profile.py --rounds 5 [--threads 1] [--no-compile]

The machine this ran on is shared: the load average is printed, and every ratio is of the peak measured in the
same minutes at the same thread count.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from vicreg.build import model_from_config
from vicreg.config import PRESETS, TrainConfig
from vicreg.loss import vicreg_loss
from vicreg.optim import build_optimizer

Step = Callable[[], None]
print = functools.partial(print, flush=True)  # each line shows at once when redirected


def gemm_gflops(dtype: torch.dtype, rounds: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def bare_step(cfg: TrainConfig, *, batch: int | None = None, fmt: torch.memory_format | None = None,
              amp: bool = True, compiled: bool = False, full: bool = False) -> tuple[Step, nn.Module]:  # fmt: skip
    """One forward+backward of two random view batches (``full``: the loss in fp32 and the LARS step too)."""
    torch.manual_seed(0)
    fmt = fmt or (torch.channels_last if cfg.channels_last else torch.contiguous_format)
    channels = 3 if cfg.data.startswith("cifar") else 1
    model = model_from_config(cfg, channels).train().to(memory_format=fmt)
    forward = torch.compile(model) if compiled else model
    s, n = cfg.views.size, batch or cfg.batch_size
    views = [torch.randn(n, channels, s, s).contiguous(memory_format=fmt) for _ in range(2)]
    o = cfg.optim
    opt = build_optimizer(o.name, model, lr=0.1, weight_decay=o.weight_decay, momentum=o.momentum, eta=o.lars_eta)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            z_a, z_b = forward(*views)
        loss = vicreg_loss(z_a.float(), z_b.float()).loss if full else z_a.float().sum() + z_b.float().sum()
        loss.backward()
        if full:
            opt.step()

    return step, model


def gflop_of(step: Step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def timed(step: Step) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def side_by_side(steps: dict[str, Step], rounds: int) -> dict[str, float]:
    """Median seconds of each step, timed in alternating rounds (a load change hits every variant alike)."""
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            samples[name].append(timed(step))
    return {k: statistics.median(v) for k, v in samples.items()}


def top_operators(step: Step, rows: int) -> None:
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print("\n| operator | share of self time | ms per step | GFLOP/s |\n|---|---:|---:|---:|")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]:
        rate = f"{e.flops / (e.cpu_time_total * 1e-6) / 1e9:.0f}" if e.flops and e.cpu_time_total else ""
        print(
            f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f}% | {e.self_cpu_time_total / 3e3:.1f} | {rate} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PRESETS["fashion-mnist-cpu"]
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    peak16, peak32 = gemm_gflops(torch.bfloat16, args.rounds), gemm_gflops(torch.float32, args.rounds)
    print(f"GEMM peak (2048x2048 matmul): bf16 {peak16:.0f} GFLOP/s, fp32 {peak32:.0f} GFLOP/s")

    base, _ = bare_step(cfg)
    for _ in range(3):  # warm-up: oneDNN picks its kernels
        base()
    flop = gflop_of(base)
    variants: dict[str, tuple[Step, float]] = {"preset (bf16, channels_last, batch 256)": (base, flop)}
    for name, kw in (
        ("contiguous format", {"fmt": torch.contiguous_format}),
        ("fp32 (no autocast)", {"amp": False}),
        ("batch 128 (x2 for 256)", {"batch": 128}),
        ("whole step (+ VICReg loss, LARS)", {"full": True}),
    ):
        step, _ = bare_step(cfg, **kw)  # type: ignore[arg-type]
        for _ in range(2):
            step()
        variants[name] = (step, gflop_of(step))
    if not args.no_compile:
        step, _ = bare_step(cfg, compiled=True)
        t0 = time.perf_counter()
        step()
        compile_s = time.perf_counter() - t0
        step()
        variants[f"torch.compile (first step {compile_s:.0f} s)"] = (step, flop)
    ref = side_by_side({k: v[0] for k, v in variants.items()}, args.rounds)
    b = cfg.batch_size
    print(f"preset bare step: {flop:.1f} GFLOP, {1000 * ref[next(iter(ref))]:.0f} ms, "
          f"{b / ref[next(iter(ref))]:.0f} images/s (reference rate: bare fwd+bwd, both views)")  # fmt: skip
    print("\n| variant | GFLOP | ms per step | GFLOP/s | of bf16 peak |\n|---|---:|---:|---:|---:|")
    for name, (_, g) in variants.items():
        s = ref[name]
        print(f"| {name} | {g:.1f} | {1000 * s:.0f} | {g / s:.0f} | {g / s / peak16:.2f} |")
    top_operators(base, args.rows)

    resnet = replace(PRESETS["cifar10-resnet18"], batch_size=args.resnet_batch)
    rstep, _ = bare_step(resnet)
    rstep()
    rflop = gflop_of(rstep)
    rs = side_by_side({"resnet": rstep}, max(2, args.rounds // 2))["resnet"]
    print(f"\nResNet-18 recipe (cifar10-resnet18, 32 px, batch {args.resnet_batch}, bf16, channels_last): "
          f"{rflop:.1f} GFLOP, {1000 * rs:.0f} ms, {rflop / rs:.0f} GFLOP/s = {rflop / rs / peak16:.2f} of the "
          f"bf16 peak")  # fmt: skip
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
