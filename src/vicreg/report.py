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
* ``label_free.png``: the label-free measures logged during training (RankMe, LiDAR, alpha-ReQ), when any;
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from vicreg.build import DataArgs, LoadedEncoder, OpenRun, Split, encoder_features, labelled_splits, open_run_with
from vicreg.diagnostics import covariance_spectrum, spectral_effective_rank
from vicreg.plots import (
    NeighborPanel,
    embedding_map,
    neighbor_grids_compare,
    plot_diagnostics,
    plot_embedding_map,
    plot_knn,
    plot_label_free,
    plot_loss,
    plot_lr,
    plot_spectrum,
    plot_std_hist,
    save_figure,
    signal_neighbors_figure,
)
from vicreg.probes.features import raw_features
from vicreg.probes.label_free import format_label_free
from vicreg.probes.retrieval import label_agreement, nearest_neighbors, pixel_features, random_queries
from vicreg.probes.table import markdown_table

__all__ = ["ReportArgs", "covariance_spectrum", "make_report", "read_metrics", "report_neighbors"]
__all__ += ["spectral_effective_rank"]


@dataclass(frozen=True, kw_only=True)
class ReportArgs(DataArgs):
    """Plot a run (loss and its terms, lr, per-dimension std, covariance spectrum and effective rank, a 2-D map of
    test embeddings, kNN accuracy over epochs, nearest neighbours) and write RUN/report.md with the plots, the
    eval table (from RUN/eval.json, see vicreg eval) and the config. The PNGs go to RUN/report/.

    --data gives the labelled data of the embedding plots (default: that of RUN/eval.json, else the training
    data).
    """

    max_points: int = 2000
    """Test rows used by the embedding plots (a seeded subset)."""
    seed: int = 0
    """Seed of that subset, of the 2-D map and of the neighbours' queries."""


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
    run: OpenRun, test_split: Split, args: ReportArgs
) -> tuple[Tensor, Tensor, Tensor, tuple[str, ...], str, float]:
    """Representation, expander output and labels of (a seeded subset of) the test rows."""
    enc, test = run.encoder, test_split.data
    if len(test) > args.max_points:
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
        test = test.subset(order[: args.max_points].sort().values)
    assert test.labels is not None
    kw: dict[str, Any] = {"cache_dir": run.run_dir / "features", "device": run.device, "batch_size": args.batch_size}
    both, _ = encoder_features(enc, test.rows, which="expander", labels=test.labels, **kw)
    dim = enc.model.feature_dim
    return both[:, :dim], both[:, dim:], test.labels.cpu(), test.classes, test.name, enc.config.loss.gamma


def _neighbours(run: OpenRun, train: Split, test: Split, args: ReportArgs) -> tuple[Path | None, str]:
    """The "Nearest neighbours" figure (features cached as vicreg eval caches them)."""
    kw: dict[str, Any] = {"cache_dir": run.run_dir / "features", "device": run.device, "batch_size": args.batch_size}
    f_train, _ = encoder_features(run.encoder, train.data.rows, labels=train.data.labels, **kw)
    f_test, _ = encoder_features(run.encoder, test.data.rows, labels=test.data.labels, **kw)
    path = run.run_dir / "report" / "neighbors.png"
    return report_neighbors(run.encoder, train, test, f_train, f_test, path, seed=args.seed)


def _online_knn_caption(rows: list[dict[str, Any]]) -> str:
    """The online monitor's protocol as its rows name it (runs before it was logged: what it was then)."""
    protocols = [r["online_knn.protocol"] for r in rows if isinstance(r.get("online_knn.protocol"), str)]
    if protocols:
        return f"The {protocols[-1][0].lower()}{protocols[-1][1:]}."
    return "Online kNN monitor (k=20): at most 10k training rows as neighbours and 2k test queries (seeded subsets)."


Plot = tuple[str, str, str]  # (title, file, caption)
LABEL_FREE_CAPTION = (
    "RankMe, LiDAR and alpha-ReQ of the representation on held-out rows, logged every --label-free-every steps "
    "(no labels); dashed: trained / random-init encoder on the same rows (above 1: rank earned by training)."
)


def make_report(run_dir: str | os.PathLike[str], args: ReportArgs | None = None) -> Path:
    """Write the plots and ``RUN/report.md`` as ``args`` say; returns the Markdown file's path.

    ``args.data`` (default: the data of ``RUN/eval.json``, else the run's training data) gives the test rows of
    the embedding plots; at most ``args.max_points`` of them (a seeded subset) are used.
    """
    args = args or ReportArgs()
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

    plots: list[Plot] = []
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
    if plot_label_free(rows, out / "label_free.png") is not None:
        plots.append(("Label-free measures during training", "label_free.png", LABEL_FREE_CAPTION))

    if not args.data and eval_report and eval_report.get("results"):
        args = replace(args, data=eval_report["data"]["source"])
    ranks: dict[str, float] = {}
    try:
        ranks = _embedding_plots(run, args, plots, notes)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        notes.append(f"Embedding plots skipped: {err}")

    md = _markdown(run, rows, config, eval_report, plots, ranks, notes)
    target = run / "report.md"
    target.write_text(md)
    return target


def _embedding_plots(run_dir: Path, args: ReportArgs, plots: list[Plot], notes: list[str]) -> dict[str, float]:
    """The plots of test embeddings and the neighbours figure, added to ``plots``; the effective ranks."""
    out = run_dir / "report"
    run = open_run_with(run_dir, args)
    train, test, _ = labelled_splits(run.kind, run.encoder.spec, run.source, seed=args.seed, download=args.download)
    h, z, labels, classes, name, gamma = _test_embeddings(run, test, args)
    parts = {"representation": h, "expander output": z}
    plot_std_hist(parts, gamma, out / "std_hist.png")
    plots.append(("Per-dimension standard deviation", "std_hist.png", f"{len(labels)} rows of {name}."))
    _, ranks = plot_spectrum(parts, out / "spectrum.png")
    plots.append(("Covariance spectrum", "spectrum.png", f"{len(labels)} rows of {name}."))
    coords, method = embedding_map(h, args.seed)
    plot_embedding_map(coords, labels.numpy(), classes, method, out / "embedding_map.png")
    plots.append((f"{method} map of the representation", "embedding_map.png", f"{len(labels)} rows of {name}."))
    figure, caption = _neighbours(run, train, test, args)
    if figure is not None:
        plots.append(("Nearest neighbours", figure.name, caption))
    else:
        notes.append(f"Nearest neighbours: {caption}")
    return ranks


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
    if eval_report and eval_report.get("label_free"):
        section = eval_report["label_free"]
        lines += [f"Label-free (no labels), on {section['sample']}:", "", format_label_free(section, True), ""]
    if eval_report and eval_report.get("results"):
        d = eval_report["data"]
        lines += [
            f"Checkpoint `{eval_report['checkpoint']}` (step {eval_report['step']}), data `{d['source']}`: "
            f"{d['n_train']} train / {d['n_test']} test images; split: {d['split']}. Accuracies in %.",
            "",
            markdown_table(eval_report),
            "",
        ]
        protocol = eval_report.get("protocol", {})  # as vicreg eval described it (vicreg.eval.eval_protocol)
        names = {"knn": "kNN", "linear": "Linear probe", "semi": "Label fractions", "baselines": "Baselines"}
        lines += [f"- {title}: {protocol[key]}." for key, title in names.items() if isinstance(protocol.get(key), str)]
    elif not eval_report:
        lines.append(f"No eval.json yet: run `vicreg eval {run}` and then this report again.")
    for title, file, caption in plots:
        lines += ["", f"## {title}", "", f"![{title}](report/{file})"]
        if caption:
            lines += ["", caption]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def report_neighbors(
    enc: LoadedEncoder,
    train: Split,
    test: Split,
    train_features: Tensor,
    test_features: Tensor,
    path: Path,
    *,
    queries: int = 8,
    k: int = 8,
    seed: int = 0,
) -> tuple[Path | None, str]:
    """The report's "Nearest neighbours": ``queries`` random test rows and their ``k`` nearest training rows for
    the trained encoder and, beside it, for the raw input (pixels / values), so the figure shows what
    pretraining added. Returns the figure's path (``None`` for tables) and a caption."""
    q = random_queries(len(test.data), queries, seed=seed)
    y_train, y_test = train.data.labels, test.data.labels
    assert y_train is not None and y_test is not None  # labelled_splits guarantees labels
    vs, vi = nearest_neighbors(train_features, test_features[q], k)
    if enc.spec.kind == "image":
        kw: dict[str, Any] = {"mean": enc.mean, "std": enc.std, "size": min(enc.image_size, 32)}
        raw_train = pixel_features(train.data.rows, **kw)
        raw_query = pixel_features(test.data.rows[q], **kw)
    else:
        raw_train = raw_features(train.data.rows, enc.mean, enc.std)
        raw_query = raw_features(test.data.rows[q], enc.mean, enc.std)
    ps, pi = nearest_neighbors(raw_train, raw_query, k)
    agree_v = 100 * label_agreement(vi, y_train, y_test[q])
    agree_p = 100 * label_agreement(pi, y_train, y_test[q])
    caption = (
        f"{len(q)} random test rows and their {k} nearest training rows (cosine similarity). Share of neighbours "
        f"with the query's label: trained encoder {agree_v:.0f}%, raw input {agree_p:.0f}%."
    )
    classes = list(train.data.classes) or None
    if enc.spec.kind == "image":
        fig = neighbor_grids_compare(
            test.data.rows[q],
            {
                f"VICReg encoder ({agree_v:.0f}% same label)": NeighborPanel(train.data.rows[vi], vs, y_train[vi]),
                f"raw pixels ({agree_p:.0f}% same label)": NeighborPanel(train.data.rows[pi], ps, y_train[pi]),
            },
            query_labels=y_test[q],
            class_names=classes,
            title=f"{len(q)} random test images and their {k} nearest training images",
            cell=0.8,
        )
        return save_figure(fig, path), caption
    if enc.spec.kind == "signal":
        fig = signal_neighbors_figure(
            test.data.rows[q],
            train.data.rows[vi],
            vs,
            query_labels=y_test[q],
            neighbor_labels=y_train[vi],
            class_names=classes,
            title="trained encoder: test series and their nearest training series",
        )
        return save_figure(fig, path), caption
    return None, caption
