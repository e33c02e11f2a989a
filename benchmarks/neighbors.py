"""Time and peak memory of all-against-all retrieval (``vicreg neighbors``) against the full similarity matrix.

Two tasks on ``N`` random ``D``-dimensional features with 1% planted near-copies:

* ``knn``: the ``k = 10`` nearest neighbours of every row among the others (``exclude_self``), i.e. ``N x N``;
* ``dup``: every pair above cosine 0.9 (:func:`vicreg.probes.retrieval.find_duplicates`).

Three implementations: ``full`` builds the whole ``N x N`` float32 matrix (``topk`` / ``triu`` + ``nonzero``);
``topk_blocks`` is the blockwise loop with a plain ``topk`` merge (no tie rule; ``knn`` only), which isolates the
cost of the deterministic lower-index-first ties; ``ours`` is the library. Each (implementation, task) runs in a
fresh subprocess; peak memory is the growth of the resident set (VmHWM, reset through /proc/self/clear_refs) once
the features exist (on CUDA: ``max_memory_allocated`` over the features). Results are checked against ``full``.

    python benchmarks/neighbors.py                           # the table of benchmarks/README.md
    python benchmarks/neighbors.py --sizes 70000x512 --impls ours topk_blocks --device cuda
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vicreg.probes.retrieval import find_duplicates, nearest_neighbors

K, THRESHOLD, BLOCK = 10, 0.9, 4096


def _features(n: int, d: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    copies = torch.randperm(n, generator=g)[: 2 * (n // 100)].view(2, -1)
    x[copies[1]] = x[copies[0]] + 0.05 * torch.randn(copies.shape[1], d, generator=g)
    return x.to(device)


def _full_knn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u = F.normalize(x, dim=1)
    sim = u @ u.T
    sim.fill_diagonal_(float("-inf"))
    return sim.topk(K, dim=1)


def _full_dup(x: torch.Tensor) -> list[tuple[int, int]]:
    u = F.normalize(x, dim=1)
    i, j = ((u @ u.T) >= THRESHOLD - 1e-6).triu(diagonal=1).nonzero(as_tuple=True)
    return sorted(zip(i.tolist(), j.tolist(), strict=True))


def _topk_blocks_knn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u = F.normalize(x, dim=1)
    n = u.shape[0]
    out_s, out_i = [], []
    for qs in range(0, n, BLOCK):
        best_s = torch.empty(min(BLOCK, n - qs), 0, device=u.device)
        best_i = torch.empty(best_s.shape[0], 0, dtype=torch.long, device=u.device)
        for bs in range(0, n, BLOCK):
            sim = u[qs : qs + BLOCK] @ u[bs : bs + BLOCK].T
            rows = torch.arange(sim.shape[0], device=u.device)
            own = rows + qs - bs
            keep = (own >= 0) & (own < sim.shape[1])
            sim[rows[keep], own[keep]] = float("-inf")
            s, i = sim.topk(min(K, sim.shape[1]), dim=1)
            merged_s, merged_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + bs], 1)
            best_s, order = merged_s.topk(min(K, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, order)
        out_s.append(best_s)
        out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:12]


def worker(impl: str, task: str, n: int, d: int, device: str) -> dict:
    """Runs in its own process: one implementation, one task, one shape."""
    dev = torch.device(device)
    x = _features(n, d, dev)
    _features(8, d, dev) @ _features(8, d, dev).T  # initialise BLAS and its threads outside the measurement
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    if task == "knn":
        rows = torch.arange(n, device=dev)
        if impl == "ours":
            _, idx = nearest_neighbors(x, x, K, exclude_self=True, query_index=rows, block=BLOCK)
        elif impl == "full":
            _, idx = _full_knn(x)
        else:
            _, idx = _topk_blocks_knn(x)
        result: object = idx.cpu().tolist()
    elif impl == "ours":
        result = sorted((i, j) for i, j, _ in find_duplicates(x, THRESHOLD, block=BLOCK))
    else:
        result = _full_dup(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_kib("VmHWM") * 1024) - base
    count = len(result) if task == "dup" else n  # type: ignore[arg-type]
    return {
        "impl": impl,
        "task": task,
        "n": n,
        "d": d,
        "s": seconds,
        "peak": peak,
        "digest": _digest(result),
        "count": count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["10000x256", "20000x256"], help="NxD shapes")
    parser.add_argument("--impls", nargs="+", default=["full", "topk_blocks", "ours"])
    parser.add_argument("--tasks", nargs="+", default=["knn", "dup"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=4, metavar=("IMPL", "TASK", "N", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, task, n, d = args.worker
        print(json.dumps(worker(impl, task, int(n), int(d), args.device)))
        return
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"# device {args.device}, float32, k = {K}, threshold {THRESHOLD}, block {BLOCK}; one process per cell")
    print("| task | N | D | impl | seconds | peak MiB | result equals full |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        n, d = (int(v) for v in size.lower().split("x"))
        for task in args.tasks:
            reference = None
            for impl in args.impls:
                if task == "dup" and impl == "topk_blocks":
                    continue
                cmd = [sys.executable, __file__, "--worker", impl, task, str(n), str(d), "--device", args.device]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                reference = r["digest"] if impl == "full" else reference
                same = "-" if reference is None else str(r["digest"] == reference)
                extra = f" ({r['count']} pairs)" if task == "dup" else ""
                print(
                    f"| {task}{extra} | {n} | {d} | {impl} | {r['s']:.2f} | {r['peak'] / 2**20:.0f} | {same} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
