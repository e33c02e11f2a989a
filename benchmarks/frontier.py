"""The quality frontier: Fashion-MNIST accuracy against minutes of pretraining, two-view vs multi-crop.

For each budget (minutes) and seed, each method pretrains the `fashion-mnist-cpu` preset with
``--budget-minutes`` (the trainer measures its step rate and fixes the number of steps so the run ends on time),
one run after the other (never two trainings at once), then `vicreg.eval.run_eval` on the full
60k/10k split: kNN (k = 20, cosine, raw features, the training resolution) and the linear probe (last epoch).

    python benchmarks/frontier.py                                   # 2.5, 5, 10 (seeds 0, 1) and 20 (seed 0)
    python benchmarks/frontier.py --budgets 2.5 5 10 --seeds 0      # a reduced frontier
    python benchmarks/frontier.py --method multicrop-4 --set views.local_crops=4 --set views.local_size=14

Results are appended to ``--results`` (JSON lines, one per run, with the machine's reference rate: the preset's
bare forward+backward in images/s, measured at the start) and a run already there is not repeated, so the script
can be stopped and restarted. ``--report`` prints the Markdown table and draws ``--plot`` from the results only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from quality import _overrides  # benchmarks/quality.py (this folder is on sys.path when run as a script)
from train import ceiling_rate  # benchmarks/train.py
from vicreg.config import PRESETS, merge
from vicreg.eval import EvalArgs, EvalSettings, run_eval
from vicreg.train import train

METHODS: dict[str, dict[str, Any]] = {
    "two-view": {},
    "multicrop-2": {"views": {"local_crops": 2, "local_size": 14}},
    "multicrop-4": {"views": {"local_crops": 4, "local_size": 14}},
    "multicrop-6": {"views": {"local_crops": 6, "local_size": 14}},
}


def reference_rate(steps: int = 8, rounds: int = 3) -> float:
    """images/s of the preset's bare forward+backward (both views, model only): the machine's speed."""
    cfg = PRESETS["fashion-mnist-cpu"]
    return statistics.median(ceiling_rate(cfg, 1, steps, backbone_only=False) for _ in range(rounds))


def _done(results: Path) -> list[dict[str, Any]]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def run_one(method: str, overrides: dict[str, Any], budget: float, seed: int, out: Path) -> dict[str, Any]:
    cfg = merge(PRESETS["fashion-mnist-cpu"], {**overrides, "seed": seed})
    cfg = replace(cfg, out=out, knn_every=0, progress=False, budget_minutes=budget)
    t0 = time.perf_counter()
    result = train(cfg)
    minutes = (time.perf_counter() - t0) / 60
    protocol = EvalSettings(k=(20,), fractions=())
    report = run_eval(out, EvalArgs(data="fashion-mnist", protocol=protocol, baselines=False))
    r = report["results"]["vicreg"]
    return {
        "method": method,
        "settings": overrides,
        "budget_minutes": budget,
        "seed": seed,
        "train_minutes": round(minutes, 2),
        "steps": result.step,
        "epochs": round(result.step / (60_000 // cfg.batch_size), 2),
        "knn_top1": r["knn"]["k20"]["top1"],
        "linear_top1": r["linear"]["last_top1"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | budget (min) | seed | trained (min) | epochs | kNN k=20 | linear (last) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["method"], r["budget_minutes"], r["seed"])):
        lines.append(
            f"| {r['method']} | {r['budget_minutes']:g} | {r['seed']} | {r['train_minutes']:.1f} | {r['epochs']:.1f} "
            f"| {r['knn_top1']:.1f} | {r['linear_top1']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    # references: normalised pixels (kNN 85.7, linear 84.2: benchmarks/README.md, Quality) and issue 18's targets
    refs = {"knn_top1": (85.7, 89.0), "linear_top1": (84.2, 91.0)}
    for ax, key, title in ((axes[0], "knn_top1", "kNN (k = 20)"), (axes[1], "linear_top1", "linear probe (last)")):
        pixels, target = refs[key]
        ax.axhline(pixels, color="grey", linestyle=":", label=f"normalised pixels {pixels}")
        ax.axhline(target, color="black", linestyle="--", linewidth=0.8, label=f"target {target}")
        for method in sorted({r["method"] for r in rows}):
            mine = [r for r in rows if r["method"] == method]
            budgets = sorted({r["budget_minutes"] for r in mine})
            means = [statistics.mean(r[key] for r in mine if r["budget_minutes"] == b) for b in budgets]
            (line,) = ax.plot(budgets, means, marker="o", label=method)
            ax.scatter([r["budget_minutes"] for r in mine], [r[key] for r in mine], color=line.get_color(), s=14)
        ax.set_xlabel("pretraining budget (minutes, 2 CPU cores)")
        ax.set_ylabel("Fashion-MNIST top-1 (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[2.5, 5.0, 10.0, 20.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--one-seed-from", type=float, default=20.0, help="budgets >= this run seed 0 only")
    parser.add_argument("--method", action="append", default=[], help=f"one of {', '.join(METHODS)} or a new name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides of a new method")
    parser.add_argument("--out", type=Path, default=Path("runs/frontier"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/frontier.jsonl"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/frontier.png"))
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    args = parser.parse_args()

    methods = args.method or ["two-view", "multicrop-4"]
    if not args.report:
        rate = reference_rate()
        machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        print(f"reference: the preset's bare forward+backward runs at {rate:.0f} images/s ({machine})", flush=True)
        for budget in args.budgets:
            for seed in args.seeds if budget < args.one_seed_from else args.seeds[:1]:
                for method in methods:
                    overrides = METHODS.get(method) or _overrides(args.set)
                    if any(
                        r["method"] == method and r["budget_minutes"] == budget and r["seed"] == seed
                        for r in _done(args.results)
                    ):
                        continue
                    out = args.out / f"{method}-{budget:g}min-seed{seed}"
                    row = run_one(method, overrides, budget, seed, out)
                    row.update(reference_images_per_s=round(rate), machine=machine, date=time.strftime("%Y-%m-%d"))
                    with args.results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    rows = _done(args.results)
    print(table(rows))
    if rows:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
