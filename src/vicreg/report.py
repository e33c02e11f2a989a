"""``vicreg report RUN``: PNG plots of a run, and two pages that show them with the config and eval table:
``report.md`` and the self-contained ``report.html`` (:mod:`vicreg.htmlreport`: the same content with the figures
inline, plus the embedding explorer of the test representations).

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

The HTML page adds the embedding explorer: the same 2-D map as an interactive scatter of at most
:data:`~vicreg.htmlreport.MAX_POINTS` test rows (a seeded subset), coloured by label (by k-means cluster when
the data has no labels); hovering a point shows it (the data kind's :meth:`~vicreg.build.DataKind.preview`:
a thumbnail, a sparkline, or the table row), clicking it lists its nearest neighbours, and the near-duplicate
pairs (cosine similarity >= :data:`DUPLICATE_THRESHOLD`) are listed below it.

The plotting functions live in :mod:`vicreg.plots`; this module reads the run, computes what they need and
writes the pages.
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
import torch.nn.functional as F
import yaml
from torch import Tensor

from vicreg.build import DataArgs, LoadedEncoder, OpenRun, Split, encoder_features, labelled_splits, open_run_with
from vicreg.data import Dataset
from vicreg.data.bands import BandImages
from vicreg.diagnostics import covariance_spectrum, spectral_effective_rank
from vicreg.htmlreport import (
    MAX_POINTS,
    Explorer,
    ReportFigure,
    Table,
    duplicates_among,
    kmeans_clusters,
    neighbors_among,
    sample_points,
    write_html_report,
)
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
from vicreg.probes.features import normalize_rows, raw_features
from vicreg.probes.label_free import format_label_free, label_free_table
from vicreg.probes.retrieval import label_agreement, nearest_neighbors, pixel_features, random_queries
from vicreg.probes.table import markdown_table, table_rows
from vicreg.progress import Progress

__all__ = ["ReportArgs", "covariance_spectrum", "make_report", "read_metrics", "report_neighbors"]
__all__ += ["spectral_effective_rank"]

DUPLICATE_THRESHOLD = 0.98
"""The explorer lists pairs of its points whose representations have at least this cosine similarity."""
EXPLORER_NEIGHBORS = 8
"""Neighbours shown when a point of the explorer is clicked."""


@dataclass(frozen=True, kw_only=True)
class ReportArgs(DataArgs):
    """Plot a run (loss and its terms, lr, per-dimension std, covariance spectrum and effective rank, a 2-D map of
    test embeddings, kNN accuracy over epochs, nearest neighbours) and write RUN/report.md and RUN/report.html with
    the plots, the eval table (from RUN/eval.json, see vicreg eval) and the config. The PNGs go to RUN/report/.
    report.html is one self-contained file (figures inline, no network) with an embedding explorer: the 2-D map
    of at most 2000 test rows, hover a point to see it, click it for its nearest neighbours, and the
    near-duplicate pairs.

    --data gives the labelled data of the embedding plots (default: that of RUN/eval.json, else the training
    data).
    """

    max_points: int = 2000
    """Test rows used by the embedding plots (a seeded subset)."""
    seed: int = 0
    """Seed of that subset, of the 2-D map and of the neighbours' queries."""
    bands: tuple[int, ...] = ()
    """Multi-band images: the band drawn as grey (one index) or the three drawn as R G B (e.g. 3 2 1 for
    Sentinel-2's B4/B3/B2); default: the first three. Each band is stretched over its training percentiles."""


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


@dataclass(frozen=True)
class _Embedded:
    """A seeded subset of the test rows and its representation, expander output and labels (``None``: none)."""

    data: Dataset | BandImages
    index: Tensor
    """The subset's rows in the test split."""
    h: Tensor
    z: Tensor
    labels: Tensor | None


def _test_embeddings(run: OpenRun, test: Dataset | BandImages, args: ReportArgs, progress: Progress) -> _Embedded:
    """Representation, expander output and labels of (a seeded subset of) the test rows."""
    enc = run.encoder
    index = torch.arange(len(test))
    if len(test) > args.max_points:
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
        index = order[: args.max_points].sort().values
        test = test.subset(index)
    kw: dict[str, Any] = {"cache_dir": run.run_dir / "features", "device": run.device, "batch_size": args.batch_size}
    progress.stage(f"features of {len(test)} test rows of {test.name} (representation and expander output)")
    track = progress.batches("features test", len(test))
    both, _ = encoder_features(enc, test.rows, which="expander", labels=test.labels, track=track, **kw)
    dim = enc.model.feature_dim
    labels = None if test.labels is None or int(test.labels.min()) < 0 else test.labels.cpu()
    return _Embedded(test, index, both[:, :dim], both[:, dim:], labels)


def _neighbours(
    run: OpenRun, train: Split, test: Split, args: ReportArgs, progress: Progress
) -> tuple[Path | None, str]:
    """The "Nearest neighbours" figure (features cached as vicreg eval caches them)."""
    kw: dict[str, Any] = {"cache_dir": run.run_dir / "features", "device": run.device, "batch_size": args.batch_size}
    progress.stage(f"nearest neighbours: features of {len(train.data)} train + {len(test.data)} test rows")
    track = progress.batches("features train", len(train.data))
    f_train, _ = encoder_features(run.encoder, train.data.rows, labels=train.data.labels, track=track, **kw)
    track = progress.batches("features test", len(test.data))
    f_test, _ = encoder_features(run.encoder, test.data.rows, labels=test.data.labels, track=track, **kw)
    path = run.run_dir / "report" / "neighbors.png"
    return report_neighbors(run.encoder, train, test, f_train, f_test, path, seed=args.seed, bands=args.bands)


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


def make_report(
    run_dir: str | os.PathLike[str], args: ReportArgs | None = None, *, progress: Progress | None = None
) -> Path:
    """Write the plots, ``RUN/report.md`` and ``RUN/report.html`` as ``args`` say; returns report.html's path.

    ``args.data`` (default: the data of ``RUN/eval.json``, else the run's training data) gives the test rows of
    the embedding plots; at most ``args.max_points`` of them (a seeded subset) are used, and at most
    :data:`~vicreg.htmlreport.MAX_POINTS` of those in the explorer. ``progress`` says what is being done
    (default: on stdout).
    """
    args = args or ReportArgs()
    progress = progress or Progress()
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
    progress.stage(f"figures of training: loss, learning rate, kNN accuracy ({len(rows)} logged rows)")
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
    explorer = None
    try:
        ranks, explorer = _embedding_plots(run, args, plots, notes, progress)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        notes.append(f"Embedding plots skipped: {err}")

    md = _markdown(run, rows, config, eval_report, plots, ranks, notes)
    target = run / "report.md"
    target.write_text(md)
    progress.stage(f"wrote {target}")
    progress.stage("writing report.html" + (f" with the explorer of {len(explorer.coords)} points" if explorer else ""))
    tables = []
    if eval_report and eval_report.get("label_free"):
        section = eval_report["label_free"]
        header, *lf_rows = label_free_table(section) or [[]]
        if lf_rows:
            tables.append(Table("Label-free measures", header, lf_rows, f"On {section.get('sample', '?')}."))
    if eval_report and eval_report.get("results"):
        columns, table = table_rows(eval_report)
        tables.append(Table("Evaluation", columns, table, " ".join(_eval_lines(eval_report))))
    return write_html_report(
        run / "report.html",
        f"VICReg run report: {run.name}",
        summary=_summary_lines(rows, ranks) or ["No training metrics logged yet."],
        tables=tables,
        figures=[ReportFigure(title, out / file, caption) for title, file, caption in plots],
        explorer=explorer,
        config=config,
        notes=notes
        if eval_report
        else [f"No eval.json yet: run vicreg eval {run} and then this report again.", *notes],
    )


def _embedding_plots(
    run_dir: Path, args: ReportArgs, plots: list[Plot], notes: list[str], progress: Progress
) -> tuple[dict[str, float], Explorer]:
    """The plots of test embeddings and the neighbours figure, added to ``plots``; the effective ranks and the
    HTML page's explorer."""
    out = run_dir / "report"
    progress.stage(f"loading the encoder of {run_dir}")
    run = open_run_with(run_dir, args)
    progress.stage(f"loading {run.source}")
    train: Split | None
    try:
        train, test, _ = labelled_splits(run.kind, run.encoder.spec, run.source, seed=args.seed, download=args.download)
    except ValueError as err:
        if "has no labels" not in str(err):
            raise
        split = "test" if run.kind.has_splits(run.source) else "train"
        train, test = None, run.kind.load_split(run.source, split, run.encoder.spec, download=args.download)
        notes.append(f"{test.data.name} has no labels: points are coloured by k-means cluster; no neighbours figure.")
    emb = _test_embeddings(run, test.data, args, progress)
    h, name, n = emb.h, emb.data.name, len(emb.data)
    progress.stage("figures of the representation: per-dimension std, covariance spectrum")
    parts = {"representation": h, "expander output": emb.z}
    plot_std_hist(parts, run.encoder.config.loss.gamma, out / "std_hist.png")
    plots.append(("Per-dimension standard deviation", "std_hist.png", f"{n} rows of {name}."))
    _, ranks = plot_spectrum(parts, out / "spectrum.png")
    plots.append(("Covariance spectrum", "spectrum.png", f"{n} rows of {name}."))
    progress.stage(f"2-D map of {n} rows (UMAP when installed, else t-SNE)")
    coords, method = embedding_map(h, args.seed)
    clusters = None
    if emb.labels is None:
        clusters = kmeans_clusters(h, seed=args.seed)
    groups = emb.labels.numpy() if emb.labels is not None else clusters
    assert groups is not None
    classes = list(emb.data.classes) if emb.labels is not None else [f"cluster {c}" for c in range(groups.max() + 1)]
    plot_embedding_map(coords, groups, classes, method, out / "embedding_map.png")
    plots.append((f"{method} map of the representation", "embedding_map.png", f"{n} rows of {name}."))
    if train is not None:
        figure, caption = _neighbours(run, train, test, args, progress)
        if figure is not None:
            plots.append(("Nearest neighbours", figure.name, caption))
        else:
            notes.append(f"Nearest neighbours: {caption}")
    explorer = _explorer(run, test, emb, coords, method, clusters, args.seed, progress)
    return ranks, explorer


def _explorer(
    run: OpenRun,
    test: Split,
    emb: _Embedded,
    coords: Any,
    method: str,
    clusters: Any,
    seed: int,
    progress: Progress,
) -> Explorer:
    """The HTML page's explorer over at most ``MAX_POINTS`` of the embedded test rows (a seeded subset)."""
    pick = sample_points(len(emb.h), MAX_POINTS, seed)
    rows = torch.from_numpy(pick)
    progress.stage(f"embedding explorer: {len(pick)} points, their previews, neighbours and near-duplicates")
    h = emb.h[rows]
    thumbnails, texts = run.kind.preview(emb.data.rows[rows])
    neighbors, similarities = neighbors_among(h, k=min(EXPLORER_NEIGHBORS, len(pick) - 1))
    at = emb.index[rows].tolist()  # rows of the test split
    names = [Path(test.paths[i]).name for i in at] if test.paths is not None else [f"test #{i}" for i in at]
    return Explorer(
        coords=coords[pick],
        neighbors=neighbors,
        similarities=similarities,
        labels=None if emb.labels is None else emb.labels[rows].numpy(),
        class_names=list(emb.data.classes),
        clusters=None if clusters is None else clusters[pick],
        thumbnails=thumbnails,
        texts=texts,
        names=names,
        duplicates=duplicates_among(h, DUPLICATE_THRESHOLD),
        method=method,
        total=len(test.data),
    )


def _summary_lines(rows: Sequence[dict[str, Any]], ranks: dict[str, float]) -> list[str]:
    """The report's opening lines: the last logged loss and the effective ranks."""
    last = next((r for r in reversed(rows) if "loss" in r), None)
    lines = []
    if last:
        lines.append(
            f"Last logged step {last['step']} (epoch {last.get('epoch', '?')}): loss {last['loss']:.4g} "
            f"(invariance {last.get('invariance', math.nan):.4g}, variance {last.get('variance', math.nan):.4g}, "
            f"covariance {last.get('covariance', math.nan):.4g})."
        )
    if ranks:
        lines.append("Effective rank on test images: " + ", ".join(f"{k} {v:.1f}" for k, v in ranks.items()) + ".")
    return lines


def _eval_lines(eval_report: dict[str, Any]) -> list[str]:
    """What eval.json evaluated (checkpoint, data, split) and its protocol, in words."""
    d = eval_report["data"]
    protocol = eval_report.get("protocol", {})  # as vicreg eval described it (vicreg.eval.eval_protocol)
    names = {"knn": "kNN", "linear": "Linear probe", "semi": "Label fractions", "baselines": "Baselines"}
    return [
        f"Checkpoint `{eval_report['checkpoint']}` (step {eval_report['step']}), data `{d['source']}`: "
        f"{d['n_train']} train / {d['n_test']} test images; split: {d['split']}. Accuracies in %.",
        *(f"{title}: {protocol[key]}." for key, title in names.items() if isinstance(protocol.get(key), str)),
    ]


def _markdown(
    run: Path,
    rows: Sequence[dict[str, Any]],
    config: dict[str, Any],
    eval_report: dict[str, Any] | None,
    plots: Sequence[tuple[str, str, str]],
    ranks: dict[str, float],
    notes: Sequence[str],
) -> str:
    lines = [f"# VICReg run report: `{run.name}`", "", *_summary_lines(rows, ranks)]
    lines += ["", "## Evaluation", ""]
    if eval_report and eval_report.get("label_free"):
        section = eval_report["label_free"]
        lines += [f"Label-free (no labels), on {section['sample']}:", "", format_label_free(section, True), ""]
    if eval_report and eval_report.get("results"):
        intro, *protocol = _eval_lines(eval_report)
        lines += [intro, "", markdown_table(eval_report), ""] + [f"- {line}" for line in protocol]
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


def _band_pixels(rows: Tensor, mean: Sequence[float], std: Sequence[float], size: int) -> Tensor:
    """Raw-pixel features of images of any bands and dtype: normalised as the encoder sees them, area-averaged
    to ``size x size``, flattened (the multi-band counterpart of ``pixel_features``)."""
    parts = [
        F.adaptive_avg_pool2d(normalize_rows(chunk, mean, std, "cpu"), size).flatten(1) for chunk in rows.split(1024)
    ]
    return torch.cat(parts)


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
    bands: tuple[int, ...] = (),
) -> tuple[Path | None, str]:
    """The report's "Nearest neighbours": ``queries`` random test rows and their ``k`` nearest training rows for
    the trained encoder and, beside it, for the raw input (pixels / values), so the figure shows what
    pretraining added. Returns the figure's path (``None`` for tables) and a caption."""
    q = random_queries(len(test.data), queries, seed=seed)
    y_train, y_test = train.data.labels, test.data.labels
    assert y_train is not None and y_test is not None  # labelled_splits guarantees labels
    vs, vi = nearest_neighbors(train_features, test_features[q], k)
    if enc.spec.kind == "image" and train.data.rows.dtype != torch.uint8:  # multi-band / 16-bit images
        raw_train = _band_pixels(train.data.rows, enc.mean, enc.std, min(enc.image_size, 32))
        raw_query = _band_pixels(test.data.rows[q], enc.mean, enc.std, min(enc.image_size, 32))
    elif enc.spec.kind == "image":
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
        rows = train.data.rows
        fig = neighbor_grids_compare(
            enc.pictures(test.data.rows[q], bands),
            {
                f"VICReg encoder ({agree_v:.0f}% same label)": NeighborPanel(
                    enc.pictures(rows[vi], bands), vs, y_train[vi]
                ),
                f"raw pixels ({agree_p:.0f}% same label)": NeighborPanel(
                    enc.pictures(rows[pi], bands), ps, y_train[pi]
                ),
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
