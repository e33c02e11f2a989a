"""``vicreg neighbors``: what a trained encoder considers similar, and the near-duplicates in a dataset.

Retrieval uses the frozen representation (cached under ``RUN/features/`` exactly as ``vicreg eval`` caches it)
and cosine similarity (:mod:`vicreg.probes.retrieval`). Images get a picture (each query, then its ``k``
nearest rows with their similarity; with labels, neighbours of another class framed red); signals a plot of each
query with its nearest series; every kind a CSV of the neighbour rows and similarities. ``duplicates`` lists the
pairs above a cosine similarity. :func:`report_neighbors` draws the report's comparison of the trained encoder
with raw pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vicreg.build import LoadedEncoder, Split, load_encoder, resolve_device, run_dir_of, use_data_root
from vicreg.data import decode_image
from vicreg.eval import encoder_features
from vicreg.plots import (
    NeighborPanel,
    duplicate_pairs_figure,
    neighbor_grid,
    neighbor_grids_compare,
    save_figure,
    signal_neighbors_figure,
)
from vicreg.probes.features import extract_features, raw_features
from vicreg.probes.retrieval import (
    find_duplicates,
    format_neighbors,
    label_agreement,
    nearest_neighbors,
    parse_queries,
    pixel_features,
    random_queries,
    write_duplicates_csv,
    write_neighbors_csv,
)

__all__ = ["NeighborsResult", "report_neighbors", "run_neighbors"]

MAX_DUPLICATE_PAIRS = 100_000
SHOWN_PAIRS = 16


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
        if enc.spec.kind != "image":
            raise ValueError(f"--query {item}: a file query needs an image run; give row numbers of the data instead")
        rows.append(decode_image(item, enc.image_size, channels=enc.channels, min_size=0))
        names.append(item.name)
        labels.append(None)
    known = None if any(y is None for y in labels) else torch.tensor(labels, dtype=torch.int64)
    return torch.stack(rows), names, known


def run_neighbors(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    data: str | None = None,
    *,
    split: str = "train",
    queries: list[str] | tuple[str, ...] = (),
    k: int = 8,
    duplicates: float | None = None,
    device: str = "auto",
    batch_size: int = 512,
    cache: bool = True,
    seed: int = 0,
    data_column: str = "",
    label_column: str = "",
    download: bool = False,
) -> NeighborsResult:
    """Nearest neighbours of ``queries`` (row numbers or image files; default 8 random rows) among the rows of
    ``data`` (default: the run's training data), and optionally the near-duplicate pairs above ``duplicates``.

    Writes ``out`` (a PNG grid for images and signals; for tables only the CSV), ``<out stem>.csv`` and, with
    ``duplicates``, ``<out stem>_duplicates.csv`` (+ ``.png`` for images)."""
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    out = Path(out)
    dev = resolve_device(device)
    enc = load_encoder(run, dev)
    if not data:
        use_data_root(enc.config.data_root)
    kind = enc.kind_for(data, data_column=data_column, label_column=label_column)
    bank = kind.load_split(data or enc.config.data, split, enc.spec, download=download)
    labels = bank.data.labels
    cache_dir = run_dir_of(enc.checkpoint) / "features" if cache else None
    bank_f, _ = encoder_features(
        enc, bank.data.rows, cache_dir=cache_dir, device=dev, batch_size=batch_size, labels=labels
    )
    n = len(bank.data)
    items: list[int | Path] = (
        parse_queries(list(queries), n) if queries else [int(i) for i in random_queries(n, 8, seed=seed)]
    )
    q_rows, q_names, q_labels = _query_rows(enc, items, bank)
    q_f = extract_features(enc.model.embed, q_rows, mean=enc.mean, std=enc.std, device=dev, batch_size=batch_size)
    sims, idx = nearest_neighbors(bank_f, q_f, k)
    if labels is not None and int(labels.min()) < 0:
        labels = None  # partly unlabelled data: no class marks
    q_labels = q_labels if labels is not None else None
    classes = list(bank.data.classes) or None
    lines = [format_neighbors(q_names, idx, sims, labels_bank=labels, labels_query=q_labels, class_names=classes)]
    files = [write_neighbors_csv(out.with_suffix(".csv"), q_names, idx, sims, labels, q_labels)]
    figure = _neighbors_figure(enc, bank, q_rows, idx, sims, labels, q_labels, q_names, classes)
    if figure is not None:
        files.append(save_figure(figure, out))
    n_pairs = None
    if duplicates is not None:
        pairs = find_duplicates(bank_f, duplicates, max_pairs=MAX_DUPLICATE_PAIRS)
        n_pairs = len(pairs)
        stem = out.with_name(f"{out.stem}_duplicates")
        files.append(write_duplicates_csv(stem.with_suffix(".csv"), pairs, names=bank.paths))
        capped = " (the most similar; the list is capped)" if n_pairs == MAX_DUPLICATE_PAIRS else ""
        lines.append(f"{n_pairs} pair(s) with cosine similarity >= {duplicates}{capped}")
        if enc.spec.kind == "image":
            top = slice(0, SHOWN_PAIRS)
            first, second = pairs.first[top], pairs.second[top]
            names = (
                None
                if bank.paths is None
                else [(bank.paths[a], bank.paths[b]) for a, b in zip(first.tolist(), second.tolist(), strict=True)]
            )
            fig = duplicate_pairs_figure(
                bank.data.rows[first], bank.data.rows[second], pairs.similarity[top], names=names
            )
            files.append(save_figure(fig, stem.with_suffix(".png")))
    return NeighborsResult("\n".join(lines), files, n_pairs)


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
) -> Any:
    rows = bank.data.rows
    common: dict[str, Any] = {"query_labels": q_labels, "query_names": q_names, "class_names": classes}
    neighbour_labels = None if labels is None or q_labels is None else labels[idx]
    if enc.spec.kind == "image":
        return neighbor_grid(q_rows, rows[idx], sims, neighbor_labels=neighbour_labels, **common)
    if enc.spec.kind == "signal":
        return signal_neighbors_figure(q_rows, rows[idx], sims, neighbor_labels=neighbour_labels, **common)
    return None  # tables: the CSV says it


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
