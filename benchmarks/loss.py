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

``--distributed`` compares ``gather=True`` (every process gathers the global batch and computes the whole
variance and covariance) with ``gather="sharded"`` (the work divided among the processes):

1. FLOPs (matmuls, forward + backward, both branches) and bytes sent per process for world sizes 1-64 at the
   paper's shapes (global batch 2048, D = 8192), from the formulas below;
2. the formulas checked against ``torch.utils.flop_counter`` in real gloo process groups at small shapes;
3. time per forward+backward with ``--world`` gloo processes on CPU (one thread each), the forms alternating
   step by step, median over ``--repeats`` steps of the slowest rank. ``sharded-autograd`` is the sharded
   form written with autograd collectives only (no hand-written backward), to show what the latter buys.

    python benchmarks/loss.py --distributed                                  # the README's tables
    python benchmarks/loss.py --distributed --sizes 128x2048 --repeats 9 --world 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vicreg import vicreg_loss
from vicreg.distributed import all_reduce_with_grad, gather_with_grad
from vicreg.loss import Gather, _sharded_uses_gram

DEFAULT_SIZES = ["256x2048", "256x8192", "512x2048", "512x8192", "2048x2048", "2048x8192"]
DEFAULT_DIST_SIZES = ["128x2048", "256x4096", "512x256"]  # rows per process x D


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


# ------------------------------------------------------------------------------------------ --distributed
PAPER_N, PAPER_D = 2048, 8192
WORLDS = [1, 2, 4, 8, 16, 32, 64]
FLOAT = 4  # bytes: the statistics are float32


def cost(form: str, n: int, world: int, d: int) -> tuple[float, float]:
    """(matmul FLOPs, bytes sent) per process and step, forward + backward, both branches, float32.

    ``n`` rows per process, ``N = world * n``. Ring collectives: an all-gather or a reduce-scatter of ``N x D``
    sends ``(world - 1) n D`` floats per process, an all-reduce of ``k`` floats ``2 (world - 1) / world * k``.

    * ``gathered``: all-gather of the batch, its reduce-scatter in the backward; ``4 min(N, D)^2 max(N, D)``.
    * ``gram`` (sharded, ``N`` small): all-gather of the centred batch; row block ``2 n N D`` + its backward
      ``2 n N D``; four all-reduced ``D``-vectors (mean and sums of squares, forward and backward) and scalars.
    * ``square`` (sharded, ``D`` small): partial ``Zc_k^T Zc_k`` all-reduced (``D^2`` floats), ``2 n D^2`` + its
      backward ``2 n D^2``; the same four ``D``-vectors.
    """
    big_n = n * world
    ring = 2 * (world - 1) / world
    if form == "gathered":
        flops = 4 * min(big_n, d) ** 2 * max(big_n, d)
        sent = 2 * (world - 1) * n * d
    elif form == "gram":
        flops = 4 * n * big_n * d
        sent = (world - 1) * n * d + ring * (4 * d + 3)
    elif form == "square":
        flops = 4 * n * d * d
        sent = ring * (d * d + 4 * d + 3)
    else:
        raise ValueError(f"unknown form {form!r}")
    return 2 * flops, 2 * sent * FLOAT


def sharded_form(n: int, world: int, d: int) -> str:
    return "gram" if _sharded_uses_gram(n, world, d) else "square"


def print_cost_table(n_global: int, d: int) -> None:
    print(f"\n# per process and step, forward + backward, both branches, float32; global batch {n_global}, D {d}")
    print(
        "| world | rows/process | gathered GFLOP | sharded GFLOP | form | FLOP ratio "
        "| gathered MB sent | sharded MB sent |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for world in WORLDS:
        n = n_global // world
        fg, bg = cost("gathered", n, world, d)
        form = sharded_form(n, world, d)
        fs, bs = cost(form, n, world, d)
        print(
            f"| {world} | {n} | {fg / 1e9:.1f} | {fs / 1e9:.1f} | {form} | {fg / fs:.0f}x | {bg / 1e6:.1f} | "
            f"{bs / 1e6:.1f} |"
        )


def sharded_autograd_loss(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """The sharded Gram form with autograd collectives only: what the hand-written backward replaces."""
    world = dist.get_world_size()
    invariance = F.mse_loss(z_a, z_b)
    total = 25.0 * invariance
    for z in (z_a, z_b):
        n, d = z.shape
        big_n = n * world
        zc = z - all_reduce_with_grad(z.sum(dim=0)) / big_n
        col_sq = all_reduce_with_grad(zc.square().sum(dim=0))
        variance = F.relu(1.0 - torch.sqrt(col_sq / (big_n - 1) + 1e-4)).mean()
        gram_sq = all_reduce_with_grad((zc @ gather_with_grad(zc).T).square().sum())
        covariance = (gram_sq - col_sq.square().sum()) / ((big_n - 1) ** 2 * d)
        total = total + 25.0 * variance / 2 + covariance
    return total


def _dist_loss(form: str, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    if form == "sharded-autograd":
        return sharded_autograd_loss(z_a, z_b)
    gather: Gather = True if form == "gathered" else "sharded"
    return vicreg_loss(z_a, z_b, gather=gather, check_finite=False).loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dist_worker(rank: int, world: int, port: int, jobs: list[dict], out: str) -> None:
    """One gloo process: FLOP counts (job kind 'flops') or alternating step times (kind 'time')."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    try:
        for job in jobs:
            n, d, forms = job["n"], job["d"], job["forms"]
            torch.manual_seed(rank)
            z_a = torch.randn(n, d).requires_grad_()
            z_b = (z_a.detach() + 0.5 * torch.randn(n, d)).requires_grad_()
            if job["kind"] == "flops":
                for form in forms:
                    with FlopCounterMode(display=False) as counter:
                        _dist_loss(form, z_a, z_b).backward()
                    results.append({**job, "form": form, "world": world, "flops": counter.get_total_flops()})
                continue
            times: dict[str, list[float]] = {form: [] for form in forms}
            values: dict[str, float] = {}
            for rep in range(job["repeats"] + 1):  # the first round is the warm-up
                for form in forms:
                    z_a.grad = z_b.grad = None
                    dist.barrier()
                    t0 = time.perf_counter()
                    loss = _dist_loss(form, z_a, z_b)
                    loss.backward()
                    elapsed = torch.tensor(time.perf_counter() - t0)
                    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
                    if rep:
                        times[form].append(float(elapsed))
                    value = loss.detach().clone()
                    dist.all_reduce(value)  # the gathered form's invariance is the rank's own: compare the means
                    values[form] = float(value) / world
            for form in forms:
                results.append(
                    {
                        **job,
                        "form": form,
                        "world": world,
                        "median_s": statistics.median(times[form]),
                        "loss": values[form],
                    }
                )
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def run_dist(world: int, jobs: list[dict], out: Path) -> list[dict]:
    mp.spawn(dist_worker, args=(world, _free_port(), jobs, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


def distributed_main(args: argparse.Namespace) -> None:
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}; gloo on CPU, 1 thread per process"
    )
    print_cost_table(PAPER_N, PAPER_D)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"vicreg_loss_bench_{os.getpid()}.json"
    # FLOP formulas against torch's counter, at shapes of both sharded forms
    print("\n# torch.utils.flop_counter vs the formulas, per process (rank 0), forward + backward")
    print("| world | rows/process | D | form | counted GFLOP | formula GFLOP | equal |")
    print("|---|---|---|---|---|---|---|")
    for world in (1, 2, 3, 4):
        jobs = [
            {"kind": "flops", "n": n, "d": d, "forms": ["gathered", "sharded"]}
            for n, d in ((64 // world * 2, 512), (256, 32))
        ]
        for r in run_dist(world, jobs, tmp):
            form = "gathered" if r["form"] == "gathered" or world == 1 else sharded_form(r["n"], world, r["d"])
            expected = cost(form, r["n"], world, r["d"])[0]
            print(
                f"| {world} | {r['n']} | {r['d']} | {r['form']}{'' if r['form'] == 'gathered' else f' ({form})'} | "
                f"{r['flops'] / 1e9:.4f} | {expected / 1e9:.4f} | {r['flops'] == expected} |",
                flush=True,
            )
    # time per step
    forms = ["gathered", "sharded", "sharded-autograd"]
    print(f"\n# {args.world} gloo processes, 1 thread each; median of {args.repeats} alternating steps (slowest rank)")
    print(
        "| rows/process | D | N | form | gathered ms | sharded ms | sharded-autograd ms | gathered/sharded "
        "| loss equal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in args.sizes:
        n, d = (int(v) for v in size.lower().split("x"))
        res = {
            r["form"]: r
            for r in run_dist(
                args.world, [{"kind": "time", "n": n, "d": d, "forms": forms, "repeats": args.repeats}], tmp
            )
        }
        ms = {f: res[f]["median_s"] * 1e3 for f in forms}
        same = all(abs(res[f]["loss"] - res["gathered"]["loss"]) <= 1e-4 * abs(res["gathered"]["loss"]) for f in forms)
        print(
            f"| {n} | {d} | {n * args.world} | {sharded_form(n, args.world, d)} | {ms['gathered']:.1f} | "
            f"{ms['sharded']:.1f} | {ms['sharded-autograd']:.1f} | {ms['gathered'] / ms['sharded']:.2f}x | {same} |",
            flush=True,
        )
        rows.append(res)
    tmp.unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=None, help="NxD shapes (--distributed: rows per process)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per implementation, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--distributed", action="store_true", help="gathered vs sharded (see above)")
    parser.add_argument("--world", type=int, default=2, help="--distributed: gloo processes for the timing")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "N", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or leave --device at cpu")
    if args.distributed:
        args.sizes = args.sizes or DEFAULT_DIST_SIZES
        args.repeats = max(args.repeats, 5)
        distributed_main(args)
        return
    args.sizes = args.sizes or DEFAULT_SIZES

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
