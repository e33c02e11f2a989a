"""``vicreg report RUN``: PNG plots of a run and one Markdown page that shows them with the config and eval table.

Plots (in ``RUN/report/``):

* ``loss.png``: the weighted loss and its three unweighted terms over steps (from ``metrics.jsonl``);
* ``lr.png``: the learning rate over steps;
* ``std_hist.png``: histograms of the per-dimension standard deviation of the representation and of the
  expander output on test images (the variance term pushes the latter above gamma);
* ``spectrum.png``: eigenvalues of the covariance of both, largest first, with their effective rank;
* ``embedding_map.png``: a 2-D map of test representations coloured by label (UMAP when installed, else
  scikit-learn's t-SNE);
* ``knn.png``: the online kNN accuracy over epochs (from ``metrics.jsonl``);
* ``diagnostics.png``: the collapse diagnostics logged during training, when there are any;
* ``neighbors.png``: 8 random test rows and their 8 nearest training rows, for the trained encoder beside the raw
  input (images; signals show the encoder's neighbours; tables get a line in the notes).

The plotting functions live in :mod:`vicreg.plots`; this module reads the run, computes what they need and
writes the page.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from vicreg.build import LoadedEncoder, Split, labelled_splits, load_encoder, resolve_device, use_data_root
from vicreg.diagnostics import covariance_spectrum, spectral_effective_rank
from vicreg.eval import encoder_features
from vicreg.neighbors import report_neighbors
from vicreg.plots import (
    embedding_map,
    plot_diagnostics,
    plot_embedding_map,
    plot_knn,
    plot_loss,
    plot_lr,
    plot_spectrum,
    plot_std_hist,
)
from vicreg.probes.table import markdown_table

__all__ = ["covariance_spectrum", "make_report", "read_metrics", "spectral_effective_rank"]


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line, from a killed run, is skipped)."""
    rows: list[dict[str, Any]] = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ report


def _test_embeddings(
    enc: LoadedEncoder, test_split: Split, run_dir: Path, max_points: int, seed: int
) -> tuple[Tensor, Tensor, Tensor, tuple[str, ...], str, float]:
    """Representation, expander output and labels of (a seeded subset of) the test rows."""
    test = test_split.data
    if len(test) > max_points:
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:max_points].sort().values
        test = test.subset(idx)
    assert test.labels is not None
    device = next(enc.model.parameters()).device
    both, _ = encoder_features(
        enc, test.rows, which="expander", cache_dir=run_dir / "features", device=device, labels=test.labels
    )
    dim = enc.model.feature_dim
    return both[:, :dim], both[:, dim:], test.labels.cpu(), test.classes, test.name, enc.config.loss.gamma


def _neighbours(enc: LoadedEncoder, train: Split, test: Split, run_dir: Path, seed: int) -> tuple[Path | None, str]:
    """The "Nearest neighbours" figure (features cached as vicreg eval caches them)."""
    device = next(enc.model.parameters()).device
    kw: dict[str, Any] = {"cache_dir": run_dir / "features", "device": device}
    f_train, _ = encoder_features(enc, train.data.rows, labels=train.data.labels, **kw)
    f_test, _ = encoder_features(enc, test.data.rows, labels=test.data.labels, **kw)
    return report_neighbors(enc, train, test, f_train, f_test, run_dir / "report" / "neighbors.png", seed=seed)


def _online_knn_caption(rows: list[dict[str, Any]]) -> str:
    """The online monitor's protocol as its rows name it (runs before it was logged: what it was then)."""
    protocols = [r["online_knn.protocol"] for r in rows if isinstance(r.get("online_knn.protocol"), str)]
    if protocols:
        return f"The {protocols[-1][0].lower()}{protocols[-1][1:]}."
    return "Online kNN monitor (k=20): at most 10k training rows as neighbours and 2k test queries (seeded subsets)."


def make_report(
    run_dir: str | os.PathLike[str],
    *,
    data: str | None = None,
    device: str = "auto",
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """Write the plots and ``RUN/report.md``; returns the Markdown file's path.

    ``data`` (default: the data of ``RUN/eval.json``, else the run's training data) gives the test images of
    the embedding plots; at most ``max_points`` of them (a seeded subset) are used.
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run folder (the --out of vicreg train)")
    if not (run / "metrics.jsonl").is_file() and not (run / "checkpoints").is_dir():
        raise FileNotFoundError(
            f"{run} holds neither metrics.jsonl nor checkpoints/; pass a run folder (the --out of vicreg train)"
        )
    out = run / "report"
    out.mkdir(exist_ok=True)
    rows = read_metrics(run / "metrics.jsonl")
    config: dict[str, Any] = {}
    if (run / "config.yaml").is_file():
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    loss_cfg = {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0, **config.get("loss", {})}
    eval_report = None
    if (run / "eval.json").is_file():
        eval_report = json.loads((run / "eval.json").read_text())

    plots: list[tuple[str, str, str]] = []  # (title, file, caption)
    notes: list[str] = []
    train_rows = [r for r in rows if "loss" in r]
    plot_loss(train_rows, loss_cfg, out / "loss.png")
    plots.append(("Loss", "loss.png", "Weighted total and the three unweighted terms, averaged over each log window."))
    plot_lr(train_rows, out / "lr.png")
    plots.append(("Learning rate", "lr.png", ""))
    final_knn = None
    if eval_report and "k20" in eval_report.get("results", {}).get("vicreg", {}).get("knn", {}):
        top1 = eval_report["results"]["vicreg"]["knn"]["k20"]["top1"]
        epochs = [r["epoch"] for r in train_rows if isinstance(r.get("epoch"), int | float)]
        final_knn = (max(epochs) if epochs else 0.0, top1, f"vicreg eval (all images): {top1:.1f}%")
    plot_knn(rows, out / "knn.png", final_knn)
    plots.append(("kNN accuracy over epochs", "knn.png", _online_knn_caption(rows)))
    if plot_diagnostics(rows, out / "diagnostics.png") is not None:
        plots.append(("Collapse diagnostics during training", "diagnostics.png", ""))

    eval_data = data or (eval_report["data"]["source"] if eval_report else None)
    ranks: dict[str, float] = {}
    try:
        enc = load_encoder(run, resolve_device(device))
        if not eval_data:
            use_data_root(enc.config.data_root)
        own = eval_data is None or str(eval_data) == str(enc.config.data)
        train, test, _ = labelled_splits(
            enc.kind_for(None if own else eval_data), enc.spec, eval_data or enc.config.data, seed=seed
        )
        h, z, labels, classes, name, gamma = _test_embeddings(enc, test, run, max_points, seed)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        notes.append(f"Embedding plots skipped: {err}")
    else:
        parts = {"representation": h, "expander output": z}
        plot_std_hist(parts, gamma, out / "std_hist.png")
        plots.append(("Per-dimension standard deviation", "std_hist.png", f"{len(labels)} rows of {name}."))
        _, ranks = plot_spectrum(parts, out / "spectrum.png")
        plots.append(("Covariance spectrum", "spectrum.png", f"{len(labels)} rows of {name}."))
        coords, method = embedding_map(h, seed)
        plot_embedding_map(coords, labels.numpy(), classes, method, out / "embedding_map.png")
        plots.append((f"{method} map of the representation", "embedding_map.png", f"{len(labels)} rows of {name}."))
        figure, caption = _neighbours(enc, train, test, run, seed)
        if figure is not None:
            plots.append(("Nearest neighbours", figure.name, caption))
        else:
            notes.append(f"Nearest neighbours: {caption}")

    md = _markdown(run, rows, config, eval_report, plots, ranks, notes)
    target = run / "report.md"
    target.write_text(md)
    return target


def _markdown(
    run: Path,
    rows: Sequence[dict[str, Any]],
    config: dict[str, Any],
    eval_report: dict[str, Any] | None,
    plots: Sequence[tuple[str, str, str]],
    ranks: dict[str, float],
    notes: Sequence[str],
) -> str:
    last = next((r for r in reversed(rows) if "loss" in r), None)
    lines = [f"# VICReg run report: `{run.name}`", ""]
    if last:
        lines.append(
            f"Last logged step {last['step']} (epoch {last.get('epoch', '?')}): loss {last['loss']:.4g} "
            f"(invariance {last.get('invariance', math.nan):.4g}, variance {last.get('variance', math.nan):.4g}, "
            f"covariance {last.get('covariance', math.nan):.4g})."
        )
    if ranks:
        lines.append("Effective rank on test images: " + ", ".join(f"{k} {v:.1f}" for k, v in ranks.items()) + ".")
    lines += ["", "## Evaluation", ""]
    if eval_report:
        d = eval_report["data"]
        lines += [
            f"Checkpoint `{eval_report['checkpoint']}` (step {eval_report['step']}), data `{d['source']}`: "
            f"{d['n_train']} train / {d['n_test']} test images; split: {d['split']}. Accuracies in %.",
            "",
            markdown_table(eval_report),
            "",
            "kNN: cosine, temperature-weighted votes. Linear: logistic regression on standardised frozen features; "
            "*last* is the honest number, *(best)* peeks at the test set. Label fractions: the same probe on a "
            "class-balanced seeded subset (linear on frozen features, not fine-tuning).",
        ]
    else:
        lines.append(f"No eval.json yet: run `vicreg eval {run}` and then this report again.")
    for title, file, caption in plots:
        lines += ["", f"## {title}", "", f"![{title}](report/{file})"]
        if caption:
            lines += ["", caption]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
