"""Retrieval on frozen features: cosine nearest neighbours, near-duplicate pairs, and their CSV files.

Data-agnostic: everything takes feature matrices (rows are samples) on any device and works in blocks, so the
similarity matrix never exists whole (70k x 70k in ``block x block`` pieces). Features are L2-normalised block by
block in float32 (the stored bank may be float16 or bfloat16); a zero row has similarity 0 to everything.
Results are deterministic: equal similarities are ordered by the lower index first.

``vicreg neighbors`` and the report's "Nearest neighbours" section are built from these functions and from the
figures in :mod:`vicreg.plots` (:func:`~vicreg.plots.neighbor_grid`, :func:`~vicreg.plots.signal_neighbors_figure`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vicreg.files import atomic_write

__all__ = [
    "DUPLICATE_TOLERANCE",
    "DuplicatePairs",
    "find_duplicates",
    "format_neighbors",
    "label_agreement",
    "nearest_neighbors",
    "parse_queries",
    "pixel_features",
    "random_queries",
    "write_duplicates_csv",
    "write_neighbors_csv",
]

BLOCK = 4096
"""Rows per block: one block of similarities is ``BLOCK x BLOCK`` float32 (64 MiB)."""

DUPLICATE_TOLERANCE = 1e-6
"""Float32 cosine of identical rows can come out a few ulps below 1; a pair counts when ``sim >= threshold - this``."""


def _check_features(name: str, x: Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, features) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}; convert with .float()")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values; check the encoder or the data")


def _check_block(block: int) -> None:
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=1)


def _topk_low_index(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of each row of ``sim``, descending; equal values in increasing column order.

    ``topk`` may return equal values in any order and, when several equal the k-th largest, any of them: ask it for
    ``k + 1`` and the top ``k`` are a unique set wherever the (k+1)-th is strictly smaller, so reordering them by
    (value, column) is enough; the rare rows with a tie across the k-th place take :func:`_topk_ties`.
    """
    if k >= sim.shape[1]:
        vals, idx = torch.sort(sim, dim=1, descending=True, stable=True)
        return vals[:, :k], idx[:, :k]
    vals, idx = sim.topk(k + 1, dim=1)
    tied = vals[:, k] == vals[:, k - 1]
    vals, idx = vals[:, :k], idx[:, :k]
    by_column = idx.sort(dim=1).indices
    vals, idx = vals.gather(1, by_column), idx.gather(1, by_column)
    by_value = torch.sort(vals, dim=1, descending=True, stable=True).indices
    vals, idx = vals.gather(1, by_value), idx.gather(1, by_value)
    if bool(tied.any()):
        rows = tied.nonzero().flatten()
        vals[rows], idx[rows] = _topk_ties(sim[rows], k)
    return vals, idx


def _topk_ties(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`_topk_low_index` for rows with ties at the k-th place: take every entry at least as large as the k-th
    (``nonzero`` lists them row by row, columns ascending), order them by value with a stable sort and keep the
    first ``k`` of each row."""
    kth = sim.topk(k, dim=1).values[:, -1:]
    rows, cols = (sim >= kth).nonzero(as_tuple=True)
    vals = sim[rows, cols]
    order = torch.sort(vals, descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]  # back to row order, value order kept within rows
    counts = torch.bincount(rows, minlength=sim.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    take = order[(starts[:, None] + torch.arange(k, device=sim.device)).reshape(-1)]
    return vals[take].view(-1, k), cols[take].view(-1, k)


@torch.no_grad()
def nearest_neighbors(
    bank: Tensor,
    queries: Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    query_index: Tensor | Sequence[int] | None = None,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of ``bank`` most cosine-similar to each row of ``queries``.

    Args:
        bank: ``(N, D)`` features to search in.
        queries: ``(Q, D)`` features to search for (moved to ``bank``'s device).
        k: neighbours per query; clipped to ``N`` (``N - 1`` with ``exclude_self``), so the result may be narrower.
        exclude_self: the queries are rows ``query_index`` of the bank; leave each one out of its own neighbours.
        query_index: ``(Q,)`` bank rows of the queries, required by ``exclude_self``.
        block: rows per block of the blockwise similarity (memory ``block x block`` floats).

    Returns:
        ``(similarities, indices)``: ``(Q, k)`` float32 cosine similarities in ``[-1, 1]``, descending along each
        row, and ``(Q, k)`` int64 bank rows; equal similarities are ordered by the lower bank row first.
    """
    _check_features("bank", bank)
    _check_features("queries", queries)
    _check_block(block)
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank and queries must have the same width, got {bank.shape[1]} and {queries.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, q, device = bank.shape[0], queries.shape[0], bank.device
    self_rows: Tensor | None = None
    if exclude_self:
        if query_index is None:
            raise ValueError("exclude_self needs query_index: the bank row of each query")
        self_rows = torch.as_tensor(query_index, dtype=torch.long, device=device).reshape(-1)
        if self_rows.shape != (q,):
            raise ValueError(f"query_index needs one bank row per query ({q}), got {self_rows.numel()}")
        if q and (int(self_rows.min()) < 0 or int(self_rows.max()) >= n):
            raise ValueError(f"query_index must lie in [0, {n}), got values outside it")
    k = min(k, n - int(exclude_self))
    if k < 1:
        raise ValueError(f"the bank has {n} row(s): too few to find a neighbour{' besides the query' * exclude_self}")
    best_sim = torch.empty(q, k, dtype=torch.float32, device=device)
    best_idx = torch.empty(q, k, dtype=torch.long, device=device)
    for qs in range(0, q, block):
        query = _unit(queries[qs : qs + block].to(device))
        run_sim = torch.empty(query.shape[0], 0, device=device)
        run_idx = torch.empty(query.shape[0], 0, dtype=torch.long, device=device)
        for bs in range(0, n, block):
            sim = query @ _unit(bank[bs : bs + block]).T
            if self_rows is not None:
                local = self_rows[qs : qs + block] - bs
                hit = ((local >= 0) & (local < sim.shape[1])).nonzero(as_tuple=True)[0]
                sim[hit, local[hit]] = float("-inf")
            top_sim, top_idx = _topk_low_index(sim, min(k, sim.shape[1]))
            # the running best come from earlier blocks (lower rows) and keep ties in row order: a stable sort
            # of [running, this block] therefore orders equal similarities by row
            merged_sim = torch.cat([run_sim, top_sim], dim=1)
            merged_idx = torch.cat([run_idx, top_idx + bs], dim=1)
            order = torch.sort(merged_sim, dim=1, descending=True, stable=True).indices[:, :k]
            run_sim, run_idx = merged_sim.gather(1, order), merged_idx.gather(1, order)
        best_sim[qs : qs + block], best_idx[qs : qs + block] = run_sim.clamp(-1.0, 1.0), run_idx
    return best_sim, best_idx


@dataclass(frozen=True)
class DuplicatePairs:
    """Pairs of rows ``first[p] < second[p]`` with cosine ``similarity[p]``, most similar first.

    Equal similarities are ordered by ``(first, second)``. Iterating yields ``(first, second, similarity)`` tuples.
    """

    first: Tensor
    second: Tensor
    similarity: Tensor

    def __len__(self) -> int:
        return int(self.first.numel())

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        return iter(self.tolist())

    def tolist(self) -> list[tuple[int, int, float]]:
        return list(zip(self.first.tolist(), self.second.tolist(), self.similarity.tolist(), strict=True))


def _sort_pairs(i: Tensor, j: Tensor, s: Tensor, n: int) -> Tensor:
    """The permutation that orders pairs by similarity descending, then by ``(i, j)``."""
    by_pair = torch.sort(i * n + j).indices
    return by_pair[torch.sort(s[by_pair], descending=True, stable=True).indices]


@torch.no_grad()
def find_duplicates(
    features: Tensor,
    threshold: float,
    *,
    block: int = BLOCK,
    max_pairs: int | None = None,
) -> DuplicatePairs:
    """Every pair of rows ``i < j`` of ``features`` whose cosine similarity is at least ``threshold``.

    Only the blocks on and above the diagonal of the similarity matrix are computed, one ``block x block`` piece at
    a time. Similarities are float32, so a pair counts when ``sim >= threshold - DUPLICATE_TOLERANCE`` (exact copies
    are found at ``threshold = 1``); reported similarities are clipped to ``[-1, 1]``.

    Args:
        features: ``(N, D)`` features (any device; the pairs come back on the CPU).
        threshold: in ``(-1, 1]``; 0.95 to 0.99 finds near-duplicates with a trained encoder.
        block: rows per block.
        max_pairs: keep only the most similar ``max_pairs`` pairs (memory stays bounded even for a low threshold);
            ``None`` keeps all.
    """
    _check_features("features", features)
    _check_block(block)
    if not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in (-1, 1], got {threshold}")
    if max_pairs is not None and max_pairs < 0:
        raise ValueError(f"max_pairs must be >= 0 or None, got {max_pairs}")
    n, cut = features.shape[0], threshold - DUPLICATE_TOLERANCE
    found_i, found_j, found_s = [torch.empty(0, dtype=torch.long)], [torch.empty(0, dtype=torch.long)], [torch.empty(0)]
    kept = 0
    for rs in range(0, n, block):
        rows = _unit(features[rs : rs + block])
        for cs in range(rs, n, block):
            sim = rows @ (rows if cs == rs else _unit(features[cs : cs + block])).T
            hit = sim >= cut
            if cs == rs:
                hit = hit.triu(diagonal=1)
            i, j = hit.nonzero(as_tuple=True)
            if not i.numel():
                continue
            found_s.append(sim[i, j].clamp(-1.0, 1.0).cpu())
            found_i.append(i.cpu() + rs)
            found_j.append(j.cpu() + cs)
            kept += i.numel()
            if max_pairs is not None and kept > 2 * max_pairs + block:  # prune now and then, not every block
                found_i, found_j, found_s = _keep_best(found_i, found_j, found_s, n, max_pairs)
                kept = max_pairs
    (first,), (second,), (similarity,) = _keep_best(found_i, found_j, found_s, n, max_pairs)
    return DuplicatePairs(first, second, similarity)


def _keep_best(
    i: list[Tensor], j: list[Tensor], s: list[Tensor], n: int, limit: int | None
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    ii, jj, ss = torch.cat(i), torch.cat(j), torch.cat(s)
    order = _sort_pairs(ii, jj, ss, n)[:limit]
    return [ii[order]], [jj[order]], [ss[order]]


def label_agreement(indices: Tensor, bank_labels: Tensor, query_labels: Tensor) -> float:
    """Share (0 to 1) of the neighbours ``indices (Q, k)`` whose bank label equals their query's label."""
    if indices.ndim != 2 or query_labels.shape != (indices.shape[0],):
        raise ValueError(
            f"need (Q, k) indices and one label per query, got {tuple(indices.shape)} and {tuple(query_labels.shape)}"
        )
    if not indices.numel():
        return float("nan")
    same = bank_labels.cpu()[indices.cpu()] == query_labels.cpu().view(-1, 1)
    return float(same.float().mean())


def random_queries(n: int, count: int, *, seed: int = 0) -> Tensor:
    """``min(count, n)`` distinct row numbers in ``[0, n)``, a seeded random choice (the same for the same seed)."""
    if n < 0 or count < 0:
        raise ValueError(f"n and count must be >= 0, got {n} and {count}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(count, n)]


def pixel_features(
    images: Tensor,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    size: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Raw-pixel features ``(N, C*S*S)`` of uint8 images ``(N, C, H, W)``: the baseline a trained encoder must beat.

    Pixels are scaled to ``[0, 1]``, optionally area-averaged to ``size x size`` (keeps the bank small), and
    standardised per channel with ``mean`` / ``std`` (in ``[0, 1]`` units; default: those of ``images`` themselves).
    Pass the training set's statistics for both the bank and the queries so that they share one scale. Without the
    centring every pair of natural images would have a cosine near 1.
    """
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1 or None, got {size}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    c = images.shape[1]
    if mean is None or std is None:
        counts = images.shape[0] * images.shape[2] * images.shape[3]
        total = torch.zeros(c, dtype=torch.float64)
        squares = torch.zeros(c, dtype=torch.float64)
        for s in range(0, images.shape[0], chunk):
            x = images[s : s + chunk].double().cpu() / 255
            total += x.sum(dim=(0, 2, 3))
            squares += (x * x).sum(dim=(0, 2, 3))
        m = total / max(counts, 1)
        mean = m if mean is None else mean
        std = (squares / max(counts, 1) - m * m).clamp_min(0).sqrt() if std is None else std
    mu = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    sd = torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6).reshape(1, -1, 1, 1)
    if mu.shape[1] != c or sd.shape[1] != c:
        raise ValueError(f"mean and std need one value per channel ({c}), got {mu.shape[1]} and {sd.shape[1]}")
    parts = []
    for s in range(0, images.shape[0], chunk):
        x = images[s : s + chunk].float() / 255
        if size is not None:
            x = F.adaptive_avg_pool2d(x, size)
        parts.append(((x - mu.to(x.device)) / sd.to(x.device)).flatten(1))
    if not parts:
        side = (images.shape[2], images.shape[3]) if size is None else (size, size)
        return torch.empty(0, c * side[0] * side[1])
    return torch.cat(parts)


def parse_queries(items: Sequence[str], n_bank: int) -> list[int | Path]:
    """Each ``--query`` item as a row number of the data (an ``int``) or an image file (a ``Path``), in order.

    An item made only of digits is a row number in ``[0, n_bank)``; anything else is a path, which must be an
    existing file (write ``./12`` for a file named ``12``).
    """
    out: list[int | Path] = []
    for item in items:
        text = item.strip()
        if text.isascii() and text.isdigit():
            index = int(text)
            if index >= n_bank:
                raise ValueError(f"--query {item}: the data has {n_bank} rows, so an index must lie in [0, {n_bank})")
            out.append(index)
            continue
        path = Path(os.path.expanduser(text))
        if not path.is_file():
            raise FileNotFoundError(f"--query {item}: no such file; give a row number of the data or an image path")
        out.append(path)
    return out


def _write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = text.getvalue().encode()
    return atomic_write(path, lambda f: f.write(data))


def _values(labels: Tensor | Sequence[object] | None, n: int, what: str) -> list[object] | None:
    if labels is None:
        return None
    values = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    if len(values) != n:
        raise ValueError(f"{what} needs {n} entries, got {len(values)}")
    return values


def write_neighbors_csv(
    path: str | os.PathLike[str],
    query_ids: Sequence[object],
    indices: Tensor,
    similarities: Tensor,
    labels_bank: Tensor | Sequence[object] | None = None,
    labels_query: Tensor | Sequence[object] | None = None,
) -> Path:
    """Write the neighbours as CSV, one row per (query, rank), atomically; returns ``path``.

    Columns: ``query`` (the id given: a row number or a file name), ``rank`` (1 = nearest), ``neighbor`` (bank row),
    ``similarity`` (cosine, 6 decimals); with ``labels_bank``, also ``neighbor_label``; with both label sets,
    ``query_label`` and ``same_label`` (1 or 0) as well.
    """
    if indices.ndim != 2 or similarities.shape != indices.shape:
        raise ValueError(
            f"indices and similarities must be (Q, k) of one shape, got {tuple(indices.shape)} and "
            f"{tuple(similarities.shape)}"
        )
    q = indices.shape[0]
    if len(query_ids) != q:
        raise ValueError(f"need one query id per row of indices ({q}), got {len(query_ids)}")
    bank = labels_bank.tolist() if isinstance(labels_bank, Tensor) else labels_bank
    query_labels = _values(labels_query, q, "labels_query")
    header = ["query", "rank", "neighbor", "similarity"]
    if bank is not None:
        header += ["neighbor_label"] + (["query_label", "same_label"] if query_labels is not None else [])
    rows: list[list[object]] = []
    for a, (row_idx, row_sim) in enumerate(zip(indices.tolist(), similarities.tolist(), strict=True)):
        for rank, (j, s) in enumerate(zip(row_idx, row_sim, strict=True), start=1):
            row: list[object] = [query_ids[a], rank, j, f"{s:.6f}"]
            if bank is not None:
                row.append(bank[j])
                if query_labels is not None:
                    row += [query_labels[a], int(bank[j] == query_labels[a])]
            rows.append(row)
    return _write_csv(path, header, rows)


def write_duplicates_csv(
    path: str | os.PathLike[str], pairs: DuplicatePairs, names: Sequence[str] | None = None
) -> Path:
    """Write near-duplicate pairs as CSV, most similar first, atomically; returns ``path``.

    Columns: ``rank`` (1 = most similar), ``first``, ``second`` (row numbers, ``first < second``), ``similarity``
    (cosine, 6 decimals); with ``names`` (one per row of the data, e.g. file paths), also ``first_name`` and
    ``second_name``.
    """
    header = ["rank", "first", "second", "similarity"] + (["first_name", "second_name"] if names is not None else [])
    rows: list[list[object]] = []
    for rank, (i, j, s) in enumerate(pairs, start=1):
        row: list[object] = [rank, i, j, f"{s:.6f}"]
        if names is not None:
            row += [names[i], names[j]]
        rows.append(row)
    return _write_csv(path, header, rows)


def format_neighbors(
    query_ids: Sequence[object],
    indices: Tensor,
    similarities: Tensor,
    *,
    labels_bank: Tensor | None = None,
    labels_query: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    show: int = 5,
) -> str:
    """A plain-text summary for the terminal: one line per query with its first ``show`` neighbours as
    ``row (similarity)``, a ``*`` after those of another class, and, with both label sets, the share of all ``k``
    neighbours that share their query's label.
    """
    if indices.ndim != 2 or similarities.shape != indices.shape or len(query_ids) != indices.shape[0]:
        raise ValueError("need one query id per row of (Q, k) indices and similarities of the same shape")

    def name(label: int) -> str:
        return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)

    bank = None if labels_bank is None else labels_bank.cpu().long()
    query = None if labels_query is None else labels_query.cpu().long()
    lines = []
    for a, (rows, sims) in enumerate(zip(indices.cpu().tolist(), similarities.cpu().tolist(), strict=True)):
        head = f"{query_ids[a]}" + (f" [{name(int(query[a]))}]" if query is not None else "")
        cells = []
        for j, s in list(zip(rows, sims, strict=True))[:show]:
            wrong = bank is not None and query is not None and int(bank[j]) != int(query[a])
            cells.append(f"{j} ({s:.3f}){'*' if wrong else ''}")
        lines.append(f"{head}: {', '.join(cells)}")
    if bank is not None and query is not None and indices.numel():
        share = label_agreement(indices, bank, query)
        lines.append(f"neighbours sharing their query's label: {100 * share:.1f}% (* marks another class)")
    return "\n".join(lines)
