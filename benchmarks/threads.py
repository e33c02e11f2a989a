"""Thread count under load: torch's default (one thread per core) against the count `vicreg.threads` chooses.

The step is the ``fashion-mnist-cpu`` preset's bare forward+backward of both views (the reference step every
benchmark states). For each load (idle, one busy core, every core busy; a busy core is a ``while True: pass``
process), the step is timed at every candidate thread count in alternating rounds, then ``choose_threads`` picks
a count from a short measurement of its own, as the trainer does, and that count's time is reported beside the
default's. Run from the repository root on an otherwise idle machine:

    python benchmarks/threads.py --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from vicreg.build import model_from_config
from vicreg.config import PRESETS
from vicreg.threads import available_cores, candidate_counts, choose_threads


def preset_step() -> Callable[[], None]:
    """One bare forward+backward of the preset on two random view batches (bf16 autocast, channels_last)."""
    cfg = PRESETS["fashion-mnist-cpu"]
    torch.manual_seed(0)
    model = model_from_config(cfg, 1).train().to(memory_format=torch.channels_last)
    s, n = cfg.views.size, cfg.batch_size
    views = [torch.randn(n, 1, s, s).contiguous(memory_format=torch.channels_last) for _ in range(2)]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sum(model(v).float().sum() for v in views)
        out.backward()  # type: ignore[union-attr]

    return step


def time_at(step: Callable[[], None], threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def busy(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed steps per thread count")
    args = parser.parse_args()
    cores = available_cores()
    default = torch.get_num_threads()
    counts = candidate_counts(cores)
    step = preset_step()
    for n in counts:  # warm-up: oneDNN primitives for every count
        time_at(step, n)
    batch = PRESETS["fashion-mnist-cpu"].batch_size
    ref = statistics.median(time_at(step, default) for _ in range(args.rounds))
    print(f"# {platform.machine()}, {cores} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"# reference step (preset bare fwd+bwd, {default} threads, idle): {batch / ref:.0f} images/s")
    print(f"# ms per step, medians of {args.rounds} alternating rounds; chosen = choose_threads(repeats=2) under load")
    print("| load | " + " | ".join(f"{n} thread{'s' * (n > 1)}" for n in counts) + " | default | chosen | gain |")
    print("|---|" + "---:|" * (len(counts) + 3))
    for load in range(cores + 1):
        procs = busy(load)
        try:
            time.sleep(1.0)
            samples: dict[int, list[float]] = {n: [] for n in counts}
            for _ in range(args.rounds):
                for n in counts:
                    samples[n].append(time_at(step, n))
            med = {n: statistics.median(v) for n, v in samples.items()}
            choice = choose_threads(lambda n: time_at(step, n), counts, repeats=2)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        name = "idle" if load == 0 else f"{load} busy core{'s' * (load > 1)}"
        cells = " | ".join(f"{1000 * med[n]:.0f}" for n in counts)
        gain = med[default] / med[choice.threads]
        print(
            f"| {name} | {cells} | {1000 * med[default]:.0f} ({default}) | {1000 * med[choice.threads]:.0f} "
            f"({choice.threads}) | {gain:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
