"""``vicreg neighbors``: what a trained encoder considers similar, and the near-duplicates in a dataset.

Retrieval uses the frozen representation (cached under ``RUN/features/`` exactly as ``vicreg eval`` caches it)
and cosine similarity (:mod:`vicreg.probes.retrieval`). Images get a picture (each query, then its ``k``
nearest rows with their similarity; with labels, neighbours of another class framed red); signals a plot of each
query with its nearest series; every kind a CSV of the neighbour rows and similarities. ``duplicates`` lists the
pairs above a cosine similarity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vicreg.build import DataArgs, LoadedEncoder, OpenRun, Split, encoder_features, open_run_with
from vicreg.data import decode_image
from vicreg.plots import duplicate_pairs_figure, neighbor_grid, save_figure, signal_neighbors_figure
from vicreg.probes.features import extract_features
from vicreg.probes.retrieval import (
    find_duplicates,
    format_neighbors,
    nearest_neighbors,
    parse_queries,
    random_queries,
    write_duplicates_csv,
    write_neighbors_csv,
)
from vicreg.progress import Progress

__all__ = ["NeighborsArgs", "NeighborsResult", "run_neighbors"]

MAX_DUPLICATE_PAIRS = 100_000
SHOWN_PAIRS = 16


@dataclass(frozen=True, kw_only=True)
class NeighborsArgs(DataArgs):
    """Look at what the encoder learned: each query's nearest rows in the data, and near-duplicate pairs.

    Cosine similarity of the frozen representation (cached in RUN/features/ like vicreg eval). Images: --out is a
    grid (each query, then its k nearest rows with their similarity; neighbours of another class framed red);
    signals: a plot of each query with its nearest series; tables: the CSV only. Always writes <out>.csv.
    """

    out: Path = Path("neighbors.png")
    """The picture to write (PNG); the CSV goes next to it."""
    split: str = "train"
    """Split of a named dataset or dataset file."""
    query: tuple[str, ...] = ()
    """Row numbers of the data and/or image files (default: 8 random rows)."""
    k: int = 8
    """Neighbours per query."""
    duplicates: float | None = None
    """Also list every pair with cosine similarity >= this (e.g. 0.98) in <out>_duplicates.csv, and draw the most
    similar pairs (images)."""
    cache: bool = True
    """Read/write features under RUN/features/."""
    seed: int = 0
    """Seed of the random queries."""
    bands: tuple[int, ...] = ()
    """Multi-band images: the band drawn as grey (one index) or the three drawn as R G B (e.g. 3 2 1 for
    Sentinel-2's B4/B3/B2); default: the first three. Each band is stretched over its training percentiles."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class NeighborsResult:
    """What ``vicreg neighbors`` wrote and prints."""

    summary: str
    files: list[Path]
    duplicates: int | None = None


def _query_rows(enc: LoadedEncoder, items: list[int | Path], bank: Split) -> tuple[Tensor, list[str], Tensor | None]:
    """The queries' rows (bank rows or image files decoded like the data), their names, their labels if all known."""
    rows, names, labels = [], [], []
    for item in items:
        if isinstance(item, int):
            rows.append(bank.data.rows[item])
            names.append(str(item))
            labels.append(None if bank.data.labels is None else int(bank.data.labels[item]))
            continue
        if enc.spec.kind != "image" or enc.band_stats is not None:
            raise ValueError(
                f"--query {item}: a file query needs a run on 8-bit images; give row numbers of the data instead"
            )
        rows.append(decode_image(item, enc.image_size, channels=enc.channels, min_size=0))
        names.append(item.name)
        labels.append(None)
    known = None if any(y is None for y in labels) else torch.tensor(labels, dtype=torch.int64)
    return torch.stack(rows), names, known


def run_neighbors(
    run_or_checkpoint: str | os.PathLike[str], args: NeighborsArgs | None = None, *, progress: Progress | None = None
) -> NeighborsResult:
    """Nearest neighbours of ``args.query`` (row numbers or image files; default 8 random rows) among the rows of
    ``args.data`` (default: the run's training data), and optionally the near-duplicate pairs above
    ``args.duplicates``.

    Writes ``args.out`` (a PNG grid for images and signals; for tables only the CSV), ``<out stem>.csv`` and,
    with ``duplicates``, ``<out stem>_duplicates.csv`` (+ ``.png`` for images). ``progress`` says what is being
    done (default: on stdout)."""
    args = args or NeighborsArgs()
    progress = progress or Progress()
    out = Path(args.out)
    progress.stage(f"loading the encoder of {run_or_checkpoint}")
    run = open_run_with(run_or_checkpoint, args)
    enc, dev = run.encoder, run.device
    progress.stage(f"loading {run.source} ({args.split})")
    bank = run.kind.load_split(run.source, args.split, enc.spec, download=args.download)
    labels = bank.data.labels
    cache_dir = run.run_dir / "features" if args.cache else None
    progress.stage(f"features of {len(bank.data)} rows on {dev}")
    bank_f, hit = encoder_features(
        enc,
        bank.data.rows,
        cache_dir=cache_dir,
        device=dev,
        batch_size=args.batch_size,
        labels=labels,
        track=progress.batches("features", len(bank.data)),
    )
    if hit:
        progress.stage(f"features read from the cache ({cache_dir})")
    n = len(bank.data)
    items: list[int | Path] = (
        parse_queries(list(args.query), n) if args.query else [int(i) for i in random_queries(n, 8, seed=args.seed)]
    )
    q_rows, q_names, q_labels = _query_rows(enc, items, bank)
    q_f = extract_features(enc.model.embed, q_rows, mean=enc.mean, std=enc.std, device=dev, batch_size=args.batch_size)
    progress.stage(f"the {args.k} nearest of {len(q_names)} queries")
    sims, idx = nearest_neighbors(bank_f, q_f, args.k)
    if labels is not None and int(labels.min()) < 0:
        labels = None  # partly unlabelled data: no class marks
    q_labels = q_labels if labels is not None else None
    classes = list(bank.data.classes) or None
    lines = [format_neighbors(q_names, idx, sims, labels_bank=labels, labels_query=q_labels, class_names=classes)]
    files = [write_neighbors_csv(out.with_suffix(".csv"), q_names, idx, sims, labels, q_labels)]
    figure = _neighbors_figure(enc, bank, q_rows, idx, sims, labels, q_labels, q_names, classes, args.bands)
    if figure is not None:
        files.append(save_figure(figure, out))
    n_pairs = None
    if args.duplicates is not None:
        progress.stage(f"pairs with cosine similarity >= {args.duplicates}")
        n_pairs, line, written = _duplicates(run, bank, bank_f, args.duplicates, out, args.bands)
        lines.append(line)
        files += written
    return NeighborsResult("\n".join(lines), files, n_pairs)


def _duplicates(
    run: OpenRun, bank: Split, bank_f: Tensor, threshold: float, out: Path, bands: tuple[int, ...] = ()
) -> tuple[int, str, list[Path]]:
    """The pairs of ``bank`` at cosine similarity >= ``threshold``: their count, a line, the files written."""
    pairs = find_duplicates(bank_f, threshold, max_pairs=MAX_DUPLICATE_PAIRS)
    n_pairs = len(pairs)
    stem = out.with_name(f"{out.stem}_duplicates")
    files = [write_duplicates_csv(stem.with_suffix(".csv"), pairs, names=bank.paths)]
    capped = " (the most similar; the list is capped)" if n_pairs == MAX_DUPLICATE_PAIRS else ""
    line = f"{n_pairs} pair(s) with cosine similarity >= {threshold}{capped}"
    if run.encoder.spec.kind == "image":
        top = slice(0, SHOWN_PAIRS)
        first, second = pairs.first[top], pairs.second[top]
        names = (
            None
            if bank.paths is None
            else [(bank.paths[a], bank.paths[b]) for a, b in zip(first.tolist(), second.tolist(), strict=True)]
        )
        enc, rows = run.encoder, bank.data.rows
        pictures = (enc.pictures(rows[first], bands), enc.pictures(rows[second], bands))
        fig = duplicate_pairs_figure(*pictures, pairs.similarity[top], names=names)
        files.append(save_figure(fig, stem.with_suffix(".png")))
    return n_pairs, line, files


def _neighbors_figure(
    enc: LoadedEncoder,
    bank: Split,
    q_rows: Tensor,
    idx: Tensor,
    sims: Tensor,
    labels: Tensor | None,
    q_labels: Tensor | None,
    q_names: list[str],
    classes: list[str] | None,
    bands: tuple[int, ...] = (),
) -> Any:
    rows = bank.data.rows
    common: dict[str, Any] = {"query_labels": q_labels, "query_names": q_names, "class_names": classes}
    neighbour_labels = None if labels is None or q_labels is None else labels[idx]
    if enc.spec.kind == "image":
        pictures = enc.pictures(q_rows, bands), enc.pictures(rows[idx], bands)
        return neighbor_grid(*pictures, sims, neighbor_labels=neighbour_labels, **common)
    if enc.spec.kind == "signal":
        return signal_neighbors_figure(q_rows, rows[idx], sims, neighbor_labels=neighbour_labels, **common)
    return None  # tables: the CSV says it
