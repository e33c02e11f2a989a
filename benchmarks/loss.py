"""Forward+backward time and peak memory of `vicreg_loss` against the naive (official-code) formulation.

The naive form is the one in facebookresearch/vicreg ``main_vicreg.py``: the full D x D covariance matrix per
branch and an off-diagonal *copy* (``flatten()[:-1].view(D-1, D+1)[:, 1:].flatten()``), squared in place.

Each (implementation, N, D) runs in a fresh subprocess so that its peak memory is its own: on CPU the peak is the
growth of the resident set (VmHWM, reset through /proc/self/clear_refs) over the resident size once the inputs
exist; on CUDA it is ``torch.cuda.max_memory_allocated`` over the inputs. Each implementation runs in ``--rounds``
processes, alternating with the other; time is the median over them of the median of ``--repeats``
forward+backward passes after one warm-up. Both implementations run in the same invocation, alternating, on
the same inputs, in float32.

    python benchmarks/loss.py                       # the table of benchmarks/README.md
    python benchmarks/loss.py --sizes 256x8192 --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from vicreg import vicreg_loss

DEFAULT_SIZES = ["256x2048", "256x8192", "512x2048", "512x8192", "2048x2048", "2048x8192"]


def naive_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official code's loss body (single process), written out as it is there."""
    n, d = x.shape
    repr_loss = torch.nn.functional.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(torch.relu(1 - std_x)) / 2 + torch.mean(torch.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)

    def off_diagonal(m: torch.Tensor) -> torch.Tensor:
        k = m.shape[0]
        return m.flatten()[:-1].view(k - 1, k + 1)[:, 1:].flatten()

    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(d) + off_diagonal(cov_y).pow_(2).sum().div(d)
    return 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss


def ours(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return vicreg_loss(x, y, check_finite=False).loss


IMPLS = {"naive": naive_loss, "ours": ours}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(impl: str, n: int, d: int, repeats: int, device: str) -> dict:
    """Runs in its own process: time and peak memory of one implementation at one shape."""
    torch.manual_seed(0)
    dev = torch.device(device)
    fn = IMPLS[impl]
    x = torch.randn(n, d, device=dev).requires_grad_()
    y = (x.detach() + 0.5 * torch.randn(n, d, device=dev)).requires_grad_()

    def step() -> None:
        x.grad = y.grad = None
        fn(x, y).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # initialise the libraries (autograd engine, BLAS, thread pools) on a tiny input so that their one-off
    # allocations are not counted as the loss's memory
    tiny = torch.randn(4, 8, device=dev, requires_grad=True)
    fn(tiny, tiny.detach() + 1).backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step()  # warm-up (also the first allocation of the gradients)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_kib("VmHWM") * 1024) - base
    check = float(fn(x, y).detach())
    return {
        "impl": impl,
        "n": n,
        "d": d,
        "median_s": statistics.median(times),
        "peak_bytes": peak,
        "loss": check,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="NxD shapes")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per implementation, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "N", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        impl, n, d = args.worker
        print(json.dumps(worker(impl, int(n), int(d), args.repeats, args.device)))
        return

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"# device {args.device}, float32, forward+backward; time: median over {args.rounds} alternating processes"
        f" of the median of {args.repeats} passes after 1 warm-up; peak: median over the processes"
    )
    print("| N | D | naive ms | ours ms | speed-up | naive peak MiB | ours peak MiB | memory ratio | loss equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in args.sizes:
        n, d = (int(v) for v in size.lower().split("x"))
        runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
        for _ in range(args.rounds):  # alternate the two so that machine load hits both alike
            for impl in IMPLS:
                cmd = [sys.executable, __file__, "--worker", impl, str(n), str(d)]
                cmd += ["--repeats", str(args.repeats), "--device", args.device]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[impl].append(json.loads(out.strip().splitlines()[-1]))
        res = {
            impl: {
                **r[0],
                "median_s": statistics.median(x["median_s"] for x in r),
                "peak_bytes": statistics.median(x["peak_bytes"] for x in r),
            }
            for impl, r in runs.items()
        }
        a, b = res["naive"], res["ours"]
        same = abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"])
        mib = 2**20
        print(
            f"| {n} | {d} | {a['median_s'] * 1e3:.1f} | {b['median_s'] * 1e3:.1f} | "
            f"{a['median_s'] / b['median_s']:.1f}x | {a['peak_bytes'] / mib:.0f} | {b['peak_bytes'] / mib:.0f} | "
            f"{b['peak_bytes'] / max(a['peak_bytes'], 1):.3f} | {same} |",
            flush=True,
        )
        rows.append(res)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
