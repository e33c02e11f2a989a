"""Do the label-free measures predict accuracy? Many short runs per dataset, each scored with and without labels.

For each dataset, ``--runs`` (default 24) short pretraining runs drawn from a seeded design that varies the base
learning rate, the variance and covariance weights, the expander width, the views' strength (crop scale minimum
for images, corruption rate for tables) and the length (epochs). Each run is scored by every measure of
:mod:`vicreg.probes.label_free` (RankMe, LiDAR, alpha-ReQ, each relative to the random-init encoder, CKA to
the random init, RankMe x (1 - CKA)) on a fixed, seeded sample of held-out rows (tables are small: there all
rows), and by kNN (k = 20, cosine) and linear-probe top-1 on the dataset's own train/test split. Then a table of
Spearman rank correlations (measure vs accuracy) per dataset, and a scatter plot.

Datasets: Fashion-MNIST (preset fashion-mnist-cpu), scikit-learn's wine and breast_cancer (tables, presets
wine-mlp / breast-cancer-mlp) and digits (8x8 digits as 64-feature table rows, the wine-mlp recipe).

    python benchmarks/label_free.py                          # every dataset, 24 runs each (about 2 hours on 2 cores)
    python benchmarks/label_free.py --datasets wine digits   # the tables only (minutes)
    python benchmarks/label_free.py --report                 # the table and plot from the results so far
    python benchmarks/label_free.py --smoke                  # 2 tiny runs per dataset: checks the script works

Results are appended to ``--results`` (JSON lines, one per run, keyed by dataset and settings) and a run already
there is not repeated, so the script can be stopped and restarted. Run folders go under ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from vicreg.build import labelled_splits, load_encoder, random_init_model, run_data_kind
from vicreg.config import PRESETS, merge
from vicreg.data import find_dataset
from vicreg.distributed import DistInfo
from vicreg.eval import encoder_features
from vicreg.models import parse_expander_spec
from vicreg.probes import knn_accuracy, linear_probe, normalize_rows
from vicreg.probes.label_free import label_free_scores, selection_score
from vicreg.train import NonFiniteLossError, train

DATASETS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "preset": "fashion-mnist-cpu",
        "data": "fashion-mnist",
        "view": ("views.crop_scale_min", 0.08, 0.6),
        "epochs": (1, 2, 3),
    },
    "wine": {
        "preset": "wine-mlp",
        "data": "sklearn:wine",
        "view": ("table_views.corrupt_rate", 0.2, 0.8),
        "epochs": (50, 150, 300),
    },
    "breast_cancer": {
        "preset": "breast-cancer-mlp",
        "data": "sklearn:breast_cancer",
        "view": ("table_views.corrupt_rate", 0.2, 0.8),
        "epochs": (25, 50, 100),
    },
    "digits": {
        "preset": "wine-mlp",
        "data": "sklearn:digits",
        "view": ("table_views.corrupt_rate", 0.2, 0.8),
        "epochs": (25, 50, 100),
    },
}
MEASURES = (
    "rankme",
    "lidar",
    "alpha_req",
    "rankme_vs_init",
    "lidar_vs_init",
    "cka_to_init",
    "rankme_moved",
    "alpha_fit",
)
ACCURACIES = ("knn_top1", "linear_top1")
SAMPLE_ROWS = 2048  # held-out rows for the label-free measures
LIDAR_ROWS = 512  # ... of which LiDAR encodes COPIES augmented copies each
COPIES = 8


def design(dataset: str, runs: int, seed: int = 0) -> list[dict[str, Any]]:
    """``runs`` settings for ``dataset``, drawn from a seeded generator (the same list every time)."""
    spec = DATASETS[dataset]
    base = PRESETS[spec["preset"]]
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
    width = parse_expander_spec(base.model.expander)[0]
    depth = len(parse_expander_spec(base.model.expander))
    key, low, high = spec["view"]
    out = []
    for _ in range(runs):
        w = int(rng.choice([max(width // 2, 32), width, width * 2]))
        out.append(
            {
                "optim.base_lr": float(f"{base.optim.base_lr * 2 ** rng.uniform(-4, 2):.4g}"),
                "loss.std_coeff": float(f"{base.loss.std_coeff * 2 ** rng.uniform(-2.3, 1):.4g}"),
                "loss.cov_coeff": float(f"{base.loss.cov_coeff * 2 ** rng.uniform(-4.6, 3.3):.4g}"),
                "model.expander": "-".join([str(w)] * depth),
                key: float(f"{rng.uniform(low, high):.3g}"),
                "epochs": int(rng.choice(spec["epochs"])),
            }
        )
    return out


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def run_key(dataset: str, settings: dict[str, Any], smoke: bool) -> str:
    text = json.dumps({"dataset": dataset, "settings": settings, "smoke": smoke}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _split_rows(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return split.data.rows, split.data.labels


@torch.no_grad()
def score_run(
    run_dir: Path, cfg: Any, views_cfg: Any, *, probe_epochs: int, limit: int | None, seed: int = 0
) -> dict[str, Any]:
    """Every label-free measure on held-out rows (LiDAR's augmented copies from ``views_cfg``'s views), and kNN /
    linear top-1, of one trained run."""
    enc = load_encoder(run_dir)
    kind = enc.kind_for(None)
    train_split, test_split, note = labelled_splits(kind, enc.spec, str(cfg.data))
    x_train, y_train = _split_rows(train_split)
    x_test, y_test = _split_rows(test_split)
    if limit:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[: limit // 2], y_test[: limit // 2]

    # the label-free sample: seeded held-out rows (all rows of a small table: the measures need N > D)
    pool = x_test if x_test.shape[0] >= 512 else torch.cat([x_train, x_test])
    order = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed))
    sample = pool[order[: min(SAMPLE_ROWS, pool.shape[0])]]
    # LiDAR's copies come from one view distribution for every run of a dataset (the preset's, at the run's data
    # and size): with each run's own views, a run with weaker augmentation would look more invariant
    reference = replace(views_cfg, data=cfg.data, knn_every=0, batch_size=min(views_cfg.batch_size, 32))
    views = run_data_kind(reference).training_data(reference, DistInfo(), torch.device("cpu")).views
    init = random_init_model(enc, seed)
    scores = label_free_scores(
        enc.model.embed,
        sample,
        lambda x, g: views(x, generator=g),
        torch.Generator().manual_seed(seed),
        prepare=lambda x: normalize_rows(x, enc.mean, enc.std, "cpu"),
        copies=COPIES,
        lidar_rows=LIDAR_ROWS,
        batch_size=256,
        init_encode=init.embed,
    )
    scores["rankme_moved"] = selection_score(scores, "rankme_moved")
    scores["alpha_fit"] = selection_score(scores, "alpha_req")

    f_train, _ = encoder_features(enc, x_train)
    f_test, _ = encoder_features(enc, x_test)
    classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    knn = knn_accuracy(f_train, y_train, f_test, y_test, k=20)["top1"]
    linear = linear_probe(f_train, y_train, f_test, y_test, num_classes=classes, epochs=probe_epochs, seed=seed)
    return {
        **scores,
        "knn_top1": float(knn),
        "linear_top1": linear.last_top1,
        "split": note,
        "eval_rows": [int(x_train.shape[0]), int(x_test.shape[0])],
    }


def run_one(dataset: str, settings: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = DATASETS[dataset]
    cfg = merge(PRESETS[spec["preset"]], _nested(settings))
    cfg = replace(cfg, data=spec["data"], out=out, knn_every=0, progress=False, device="cpu", seed=args.seed)
    if args.smoke:  # a handful of steps of a small model: proves the pipeline, measures nothing
        cfg = replace(cfg, max_steps=3, ckpt_every=1000, batch_size=min(cfg.batch_size, 32))
    row: dict[str, Any] = {"dataset": dataset, "settings": settings, "smoke": args.smoke, "seed": args.seed}
    t0 = time.perf_counter()
    try:
        result = train(cfg)
    except NonFiniteLossError as err:
        return {**row, "diverged": str(err).splitlines()[0], "train_minutes": (time.perf_counter() - t0) / 60}
    row.update(steps=result.step, train_minutes=round((time.perf_counter() - t0) / 60, 3))
    t1 = time.perf_counter()
    views_cfg = PRESETS[spec["preset"]]
    row.update(score_run(out, cfg, views_cfg, probe_epochs=args.probe_epochs, limit=args.limit, seed=args.seed))
    row["score_minutes"] = round((time.perf_counter() - t1) / 60, 3)
    return row


def _done(results: Path) -> list[dict[str, Any]]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def correlations(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Spearman rho (and n) of each measure against each accuracy, per dataset (diverged runs left out)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        runs = [r for r in rows if r["dataset"] == dataset and "knn_top1" in r]
        table: dict[str, dict[str, float]] = {}
        for m in MEASURES:
            table[m] = {}
            for acc in ACCURACIES:
                pairs = [(r[m], r[acc]) for r in runs if m in r and math.isfinite(r[m])]
                if len(pairs) < 3:
                    table[m][acc] = math.nan
                    continue
                rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
                table[m][acc] = float(rho)
            table[m]["n"] = len(runs)
        out[dataset] = table
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    corr = correlations(rows)
    lines = ["| dataset | runs | " + " | ".join(MEASURES) + " |", "|---|---|" + "---|" * len(MEASURES)]
    for dataset, table in corr.items():
        for acc in ACCURACIES:
            cells = [f"{table[m][acc]:+.2f}" if math.isfinite(table[m][acc]) else "-" for m in MEASURES]
            lines.append(
                f"| {dataset} ({acc.removesuffix('_top1')}) | {table[MEASURES[0]]['n']:.0f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def plot(
    rows: list[dict[str, Any]], path: Path, measures: tuple[str, ...] = ("rankme", "lidar", "alpha_req", "rankme_moved")
) -> None:
    datasets = sorted({r["dataset"] for r in rows if "knn_top1" in r})
    if not datasets:
        return
    fig = Figure(figsize=(3.2 * len(measures), 2.8 * len(datasets)))
    axes = fig.subplots(len(datasets), len(measures), squeeze=False)
    for i, dataset in enumerate(datasets):
        runs = [r for r in rows if r["dataset"] == dataset and "knn_top1" in r]
        for j, m in enumerate(measures):
            ax = axes[i][j]
            ax.scatter([r.get(m, math.nan) for r in runs], [r["knn_top1"] for r in runs], s=14)
            ax.set_xlabel(m)
            if j == 0:
                ax.set_ylabel(f"{dataset}\nkNN top-1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--runs", type=int, default=24, help="runs per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/label_free"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/label_free.jsonl"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/label_free.png"))
    parser.add_argument("--probe-epochs", type=int, default=30, help="epochs of the linear probe")
    parser.add_argument("--limit", type=int, default=0, help="evaluate on at most this many training rows (0: all)")
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    parser.add_argument("--smoke", action="store_true", help="2 tiny runs per dataset, to check the script works")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.probe_epochs, args.limit = 2, 2, args.limit or 1000
        if args.results == parser.get_default("results"):
            args.results = args.out / "smoke.jsonl"
        if args.plot == parser.get_default("plot"):
            args.plot = args.out / "smoke.png"
    if "fashion-mnist" in args.datasets:
        find_dataset("fashion-mnist", download=False)  # a clear error now rather than after the tables

    if not args.report:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        done = {run_key(r["dataset"], r["settings"], r.get("smoke", False)) for r in _done(args.results)}
        machine = f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}"
        for dataset in args.datasets:
            for i, settings in enumerate(design(dataset, args.runs, args.seed)):
                key = run_key(dataset, settings, args.smoke)
                if key in done:
                    continue
                print(f"[{dataset} {i + 1}/{args.runs}] {settings}", flush=True)
                row = run_one(dataset, settings, args.out / dataset / key, args)
                row["machine"] = machine
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                words = (
                    "diverged"
                    if "diverged" in row
                    else (
                        f"kNN {row['knn_top1']:.1f} linear {row['linear_top1']:.1f} rankme {row['rankme']:.1f} "
                        f"lidar {row['lidar']:.1f} alpha {row['alpha_req']:.2f} "
                        f"({row['train_minutes']:.1f} + {row['score_minutes']:.1f} min)"
                    )
                )
                print(f"  {words}", flush=True)
    rows = [r for r in _done(args.results) if r.get("smoke", False) == args.smoke]
    print(markdown(rows))
    plot(rows, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
