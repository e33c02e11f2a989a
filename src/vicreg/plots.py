"""The plots of ``vicreg report``, each a pure function from numbers to one PNG file.

Matplotlib is used through its object API (``Figure``), which renders with Agg and never touches pyplot's
global state or the user's backend. :mod:`vicreg.report` decides what to plot and assembles the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from vicreg.diagnostics import covariance_spectrum, per_dim_std, spectral_effective_rank
from vicreg.files import atomic_write

__all__ = [
    "NeighborPanel",
    "duplicate_pairs_figure",
    "embedding_map",
    "grid_size",
    "neighbor_grid",
    "neighbor_grids_compare",
    "plot_diagnostics",
    "plot_embedding_map",
    "plot_knn",
    "plot_loss",
    "plot_lr",
    "plot_spectrum",
    "plot_std_hist",
    "save_figure",
    "signal_neighbors_figure",
]

DPI = 110


def _series(rows: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    pts = [(r[x], r[key]) for r in rows if isinstance(r.get(key), int | float) and isinstance(r.get(x), int | float)]
    # a resumed run may log a step twice: keep the last value of each step
    last = dict(pts)
    xs = np.array(sorted(last), dtype=float)
    return xs, np.array([last[v] for v in sorted(last)], dtype=float)


def _figure(width: float, height: float) -> Any:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path)
    return path


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=10, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_loss(rows: Sequence[dict[str, Any]], coeffs: dict[str, float], path: Path) -> Path:
    fig = _figure(10, 6.5)
    axes = fig.subplots(2, 2, sharex=True)
    titles = {
        "loss": f"total loss = {coeffs['sim_coeff']:g}·inv + {coeffs['std_coeff']:g}·var + {coeffs['cov_coeff']:g}·cov",
        "invariance": "invariance (mean squared distance of the views)",
        "variance": "variance (hinge on per-dimension std)",
        "covariance": "covariance (off-diagonal, squared)",
    }
    for ax, (key, title) in zip(axes.flat, titles.items(), strict=True):
        x, y = _series(rows, key)
        if len(x):
            ax.plot(x, y, lw=1.5, marker="o" if len(x) < 30 else None, ms=3)
        else:
            _empty(ax, f"no '{key}' values in metrics.jsonl")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("weighted total" if key == "loss" else "term value (unweighted)")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("optimiser step")
    fig.suptitle("VICReg loss during training", fontsize=12)
    return _save(fig, path)


def plot_lr(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    x, y = _series(rows, "lr")
    if len(x):
        ax.plot(x, y, lw=1.5, marker="o" if len(x) < 30 else None, ms=3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        _empty(ax, "no 'lr' values in metrics.jsonl")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate (linear warm-up, then cosine)", fontsize=11)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_knn(rows: Sequence[dict[str, Any]], path: Path, final: tuple[float, float, str] | None = None) -> Path:
    """The online monitor's kNN accuracy per epoch; ``final``: ``(epoch, top-1, label)`` of vicreg eval."""
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    drawn = False
    # online_knn.*: runs before it was renamed logged knn.*
    online = "online_knn" if any("online_knn.top1" in r for r in rows) else "knn"
    for key, label in ((f"{online}.top1", "top-1"), (f"{online}.top5", "top-5")):
        x, y = _series(rows, key, x="epoch")
        if len(x):
            ax.plot(x, y, marker="o", ms=4, lw=1.5, label=f"online monitor (subset), {label}")
            drawn = True
    if final is not None:
        ax.plot([final[0]], [final[1]], marker="*", ms=12, ls="none", color="tab:red", label=final[2])
    if drawn or final is not None:
        epochs = [*_series(rows, f"{online}.top1", x="epoch")[0].tolist(), *([final[0]] if final else [])]
        ax.set_xlim(0, max(1.0, *epochs) * 1.05)
        ax.set_xlabel("epoch")
        ax.set_ylabel("kNN accuracy (%)")
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    if not drawn:
        ax.text(
            0.5,
            0.85,
            "no online kNN values logged\n(knn_every = 0, no labelled test split, or under one epoch)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=9,
            color="0.35",
        )
        if final is None:
            ax.set_xticks([])
            ax.set_yticks([])
    ax.set_title("kNN top-1 accuracy on the held-out split (k = 20)", fontsize=11)
    return _save(fig, path)


def plot_std_hist(parts: dict[str, Tensor], gamma: float, path: Path) -> Path:
    fig = _figure(10, 3.8)
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    for ax, (name, z) in zip(axes, parts.items(), strict=True):
        std = per_dim_std(z.float()).numpy()
        right = float(max(std.max(), gamma if name.startswith("expander") else 0.0)) * 1.05 or 1.0
        ax.hist(std, bins=min(80, max(20, len(std) // 8)), range=(0.0, right), color="tab:blue", alpha=0.85)
        ax.set_xlim(0.0, right)
        if name.startswith("expander"):
            ax.axvline(gamma, color="tab:red", ls="--", lw=1.5, label=f"gamma = {gamma:g} (variance target)")
            ax.legend(fontsize=8)
        below = float((std < 1e-2).mean()) * 100
        ax.set_title(f"{name}: {len(std)} dims, median {np.median(std):.3g}, {below:.0f}% below 0.01", fontsize=10)
        ax.set_xlabel("standard deviation of the dimension over test images")
        ax.set_ylabel("number of dimensions")
        ax.grid(alpha=0.3)
    fig.suptitle("Per-dimension standard deviation (collapse shows as a pile-up at 0)", fontsize=12)
    return _save(fig, path)


def plot_spectrum(parts: dict[str, Tensor], path: Path) -> tuple[Path, dict[str, float]]:
    fig = _figure(7, 4.2)
    ax = fig.subplots()
    ranks = {}
    for name, z in parts.items():
        eig = covariance_spectrum(z)
        ranks[name] = spectral_effective_rank(eig)
        values = eig.numpy()
        floor = max(float(values[0]) * 1e-12, 1e-30) if values[0] > 0 else 1e-30
        ax.semilogy(
            np.arange(1, len(values) + 1),
            np.maximum(values, floor),
            lw=1.5,
            label=f"{name} (dim {len(values)}): effective rank {ranks[name]:.1f}",
        )
    ax.set_xlabel("eigenvalue index (largest first)")
    ax.set_ylabel("eigenvalue of the covariance (log scale)")
    ax.set_title("Covariance spectrum of test embeddings", fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path), ranks


def embedding_map(features: Tensor, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``features`` by UMAP (when installed) or t-SNE (after PCA to 50 dimensions)."""
    x = features.double().numpy()
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
    try:
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        pass
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x), "t-SNE"


def plot_embedding_map(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], method: str, path: Path) -> Path:
    fig = _figure(7.5, 6)
    ax = fig.subplots()
    present = sorted(set(labels.tolist()))
    cmap = _colors(len(present))
    for i, c in enumerate(present):
        sel = labels == c
        name = classes[c] if c < len(classes) else str(c)
        ax.scatter(coords[sel, 0], coords[sel, 1], s=6, alpha=0.7, color=cmap[i], label=name, linewidths=0)
    if len(present) <= 20:
        ax.legend(fontsize=8, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), title="label")
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(f"{method} of {len(labels)} test representations, coloured by label", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def _colors(n: int) -> list[Any]:
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i if n <= 20 else i / max(1, n - 1)) for i in range(n)]


def plot_diagnostics(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    keys = [
        ("diag.std_mean", "mean per-dimension std"),
        ("diag.frac_std_below_gamma", "share of dims with std < gamma"),
        ("diag.mean_abs_corr", "mean |correlation| off the diagonal"),
        ("diag.effective_rank_ratio", "effective rank / min(N, D)"),
    ]
    if not any(_series(rows, k)[0].size for k, _ in keys):
        return None
    fig = _figure(10, 6)
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (key, title) in zip(axes.flat, keys, strict=True):
        x, y = _series(rows, key)
        if len(x):
            ax.plot(x, y, marker="o", ms=3, lw=1.5)
        else:
            _empty(ax, f"no '{key}' values")
        if key in ("diag.frac_std_below_gamma", "diag.effective_rank_ratio"):
            ax.set_ylim(-0.05, 1.05)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("optimiser step")
    fig.suptitle("Collapse diagnostics of the expander output on training batches", fontsize=12)
    return _save(fig, path)


def plot_label_free(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """The label-free measures logged during training (``label_free.*`` of metrics.jsonl) over the steps: each
    measure and, dashed on the right axis, the trained / random-init ratio. ``None`` when none were logged."""
    keys = [("rankme", "RankMe"), ("lidar", "LiDAR"), ("alpha_req", "alpha-ReQ (best near 1)")]
    if not any(_series(rows, f"label_free.{k}")[0].size for k, _ in keys):
        return None
    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3)
    for ax, (key, title) in zip(axes, keys, strict=True):
        x, y = _series(rows, f"label_free.{key}")
        if len(x):
            ax.plot(x, y, marker="o", ms=3, lw=1.5, color="tab:blue", label="trained")
        else:
            _empty(ax, f"no '{key}' values")
        xr, yr = _series(rows, f"label_free.{key}_vs_init")
        if len(xr):
            right = ax.twinx()
            right.plot(xr, yr, ls="--", lw=1.2, color="tab:orange")
            right.axhline(1.0, color="tab:orange", lw=0.6, alpha=0.5)
            right.set_ylabel("trained / random init", color="tab:orange", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    fig.suptitle("Label-free measures on held-out rows (no labels)", fontsize=12)
    return _save(fig, path)


# ------------------------------------------------------------------------------ nearest neighbours (vicreg neighbors)
#
# Image grids are laid out by hand in inches, so their size in pixels is known in advance: a grid of Q queries with k
# neighbours is ``Q`` rows by ``k + 1`` cells, each cell ``cell`` inches square (the image, the similarity above it
# and the class name below it), plus a band of ``GRID_HEAD * cell`` inches for panel headings and ``GRID_TITLE *
# cell`` for a title; panels side by side are ``GRID_GAP * cell`` apart. :func:`grid_size` gives the PNG size.

CELL = 1.1
"""Default side of one grid cell in inches (121 pixels at the default ``DPI``)."""
GRID_HEAD = 0.3
GRID_TITLE = 0.35
GRID_GAP = 0.25
_QUERY_COLOR = "tab:blue"
_WRONG_COLOR = "tab:red"


class NeighborPanel(NamedTuple):
    """One panel of :func:`neighbor_grids_compare`: the neighbours found by one representation."""

    neighbor_images: Tensor | np.ndarray  # (Q, k, C, H, W) uint8
    similarities: Tensor | np.ndarray  # (Q, k)
    neighbor_labels: Tensor | np.ndarray | None = None  # (Q, k) ints


def _grid_inches(
    rows: int, cols: int, *, panels: int = 1, headings: bool = False, title: bool = False, cell: float = CELL
) -> tuple[float, float]:
    width = cell * (panels * cols + (panels - 1) * GRID_GAP)
    height = cell * (rows + (GRID_HEAD if headings else 0.0) + (GRID_TITLE if title else 0.0))
    return width, height


def grid_size(
    queries: int,
    k: int,
    *,
    panels: int = 1,
    headings: bool = False,
    title: bool = False,
    cell: float = CELL,
    dpi: int = DPI,
) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG of a neighbour grid (:func:`neighbor_grid`, ``panels=1``,
    ``headings=False``; :func:`neighbor_grids_compare`, ``headings=True``) saved with :func:`save_figure`.

    In inches: width ``cell * (panels * (k + 1) + (panels - 1) * GRID_GAP)``, height ``cell * (queries +
    GRID_HEAD [headings] + GRID_TITLE [title])``; pixels are inches times ``dpi``, truncated as Agg does.
    """
    w, h = _grid_inches(queries, k + 1, panels=panels, headings=headings, title=title, cell=cell)
    return int(w * dpi), int(h * dpi)


def save_figure(fig: Any, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` atomically (format from the suffix, e.g. ``.png``) at ``dpi`` (default: the figure's own)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    resolution = fig.dpi if dpi is None else dpi
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=resolution, facecolor="white"))


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _images(x: Tensor | np.ndarray, ndim: int, what: str) -> np.ndarray:
    arr = _numpy(x)
    if arr.dtype != np.uint8 or arr.ndim != ndim or arr.shape[-3] not in (1, 3):
        raise ValueError(
            f"{what} must be uint8 with {ndim} dimensions and 1 or 3 channels (..., C, H, W), "
            f"got {arr.dtype} {arr.shape}"
        )
    return arr


def _class_name(label: Any, class_names: Sequence[str] | None) -> str:
    label = int(label)
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)


def _frame(ax: Any, color: str | None, width: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(color is not None)
        if color is not None:
            spine.set_edgecolor(color)
            spine.set_linewidth(width)


def _image_cell(
    fig: Any,
    left: float,
    top: float,
    size: tuple[float, float],
    image: np.ndarray,
    *,
    above: str,
    below: str | None,
    frame: str | None,
    cell: float,
) -> Any:
    """Draw ``image (C, H, W)`` in the cell whose top-left corner is at ``(left, top)`` inches from the bottom-left."""
    fw, fh = size
    above_band, below_band, pad = 0.17 * cell, (0.13 if below is not None else 0.05) * cell, 0.06 * cell
    box = (left + pad, top - cell + below_band, cell - 2 * pad, cell - above_band - below_band)
    ax = fig.add_axes((box[0] / fw, box[1] / fh, box[2] / fw, box[3] / fh))
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
    font = 6.0 * cell
    color = frame if frame == _WRONG_COLOR else "black"
    ax.set_title(above, fontsize=font, pad=2, color=color)
    if below is not None:
        ax.set_xlabel(below, fontsize=0.9 * font, labelpad=1, color=color)
    _frame(ax, frame, 1.5 * cell)
    return ax


def _draw_panel(
    fig: Any,
    size: tuple[float, float],
    left: float,
    top: float,
    queries: np.ndarray,
    panel: NeighborPanel,
    *,
    query_labels: np.ndarray | None,
    query_names: Sequence[str] | None,
    class_names: Sequence[str] | None,
    cell: float,
) -> None:
    neighbours = _images(panel.neighbor_images, 5, "neighbor_images")
    sims = _numpy(panel.similarities).astype(float)
    q, k = neighbours.shape[:2]
    if queries.shape[0] != q or sims.shape != (q, k):
        raise ValueError(
            f"need matching query images {queries.shape[:1]}, neighbour images {neighbours.shape[:2]} and "
            f"similarities {sims.shape}: (Q,), (Q, k), (Q, k)"
        )
    labels = None if panel.neighbor_labels is None else _numpy(panel.neighbor_labels)
    if labels is not None and labels.shape != (q, k):
        raise ValueError(f"neighbor_labels must be (Q, k) = {(q, k)}, got {labels.shape}")
    for r in range(q):
        row_top = top - r * cell
        name = query_names[r] if query_names is not None else "query"
        query_class = None if query_labels is None else _class_name(query_labels[r], class_names)
        _image_cell(fig, left, row_top, size, queries[r], above=name, below=query_class, frame=_QUERY_COLOR, cell=cell)
        for c in range(k):
            wrong = labels is not None and query_labels is not None and int(labels[r, c]) != int(query_labels[r])
            _image_cell(
                fig,
                left + (c + 1) * cell,
                row_top,
                size,
                neighbours[r, c],
                above=f"{sims[r, c]:.3f}",
                below=None if labels is None else _class_name(labels[r, c], class_names),
                frame=_WRONG_COLOR if wrong else None,
                cell=cell,
            )


def neighbor_grids_compare(
    query_images: Tensor | np.ndarray,
    panels: Mapping[str, NeighborPanel],
    *,
    query_labels: Tensor | np.ndarray | None = None,
    query_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    cell: float = CELL,
    dpi: int = DPI,
) -> Any:
    """Neighbour grids side by side, one panel per representation (e.g. ``{"VICReg encoder": .., "raw pixels": ..}``).

    Each panel has a row per query: the query (blue frame; ``query_names[r]`` or "query" above it), then its
    neighbours, nearest first, with their cosine similarity above. With ``query_labels`` and a panel's
    ``neighbor_labels``, class names go below the images and neighbours of another class are framed and
    labelled red. Grey (1-channel) images are drawn grey. The size is :func:`grid_size` with ``headings=True``.
    """
    return _grid_figure(query_images, panels, query_labels, query_names, class_names, title, True, cell, dpi)


def _grid_figure(
    query_images: Tensor | np.ndarray,
    panels: Mapping[str, NeighborPanel],
    query_labels: Tensor | np.ndarray | None,
    query_names: Sequence[str] | None,
    class_names: Sequence[str] | None,
    title: str | None,
    headings: bool,
    cell: float,
    dpi: int,
) -> Any:
    if not panels:
        raise ValueError("a neighbour grid needs at least one panel")
    if cell <= 0 or dpi <= 0:
        raise ValueError(f"cell and dpi must be > 0, got {cell} and {dpi}")
    queries = _images(query_images, 4, "query_images")
    q, k = _images(next(iter(panels.values())).neighbor_images, 5, "neighbor_images").shape[:2]
    if any(_numpy(p.neighbor_images).shape[:2] != (q, k) for p in panels.values()):
        raise ValueError("every panel needs the same number of queries and neighbours")
    if query_names is not None and len(query_names) != q:
        raise ValueError(f"need one query name per query ({q}), got {len(query_names)}")
    labels = None if query_labels is None else _numpy(query_labels).reshape(-1)
    if labels is not None and labels.shape != (q,):
        raise ValueError(f"query_labels needs one label per query ({q}), got {labels.shape[0]}")
    size = _grid_inches(q, k + 1, panels=len(panels), headings=headings, title=title is not None, cell=cell)
    fig = Figure(figsize=size, dpi=dpi)
    top = size[1]
    if title is not None:
        fig.text(0.5, 1 - 0.5 * GRID_TITLE * cell / size[1], title, ha="center", va="center", fontsize=8.5 * cell)
        top -= GRID_TITLE * cell
    panel_width = (k + 1) * cell
    for p, (name, panel) in enumerate(panels.items()):
        left = p * (panel_width + GRID_GAP * cell)
        if headings:
            centre = (left + panel_width / 2) / size[0]
            y = (top - 0.5 * GRID_HEAD * cell) / size[1]
            fig.text(centre, y, name, ha="center", va="center", fontsize=7.5 * cell, weight="bold")
        panel_top = top - (GRID_HEAD * cell if headings else 0.0)
        _draw_panel(
            fig,
            size,
            left,
            panel_top,
            queries,
            panel,
            query_labels=labels,
            query_names=query_names,
            class_names=class_names,
            cell=cell,
        )
    return fig


def neighbor_grid(
    query_images: Tensor | np.ndarray,
    neighbor_images: Tensor | np.ndarray,
    similarities: Tensor | np.ndarray,
    *,
    query_labels: Tensor | np.ndarray | None = None,
    neighbor_labels: Tensor | np.ndarray | None = None,
    query_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    cell: float = CELL,
    dpi: int = DPI,
) -> Any:
    """A grid of ``Q`` rows: the query ``query_images[r] (C, H, W)`` uint8, then its ``k`` neighbours
    ``neighbor_images[r] (k, C, H, W)`` with ``similarities[r]`` above them; see :func:`neighbor_grids_compare` for
    labels and frames. The size is :func:`grid_size` (``headings=False``, ``title=title is not None``).
    """
    panel = NeighborPanel(neighbor_images, similarities, neighbor_labels)
    return _grid_figure(query_images, {"": panel}, query_labels, query_names, class_names, title, False, cell, dpi)


def duplicate_pairs_figure(
    images_a: Tensor | np.ndarray,
    images_b: Tensor | np.ndarray,
    similarities: Tensor | np.ndarray | Sequence[float],
    *,
    names: Sequence[tuple[str, str]] | None = None,
    per_row: int = 4,
    title: str | None = None,
    cell: float = CELL,
    dpi: int = DPI,
) -> Any:
    """Near-duplicate pairs ``images_a[p]``, ``images_b[p]`` (uint8 ``(P, C, H, W)``), ``per_row`` pairs a row,
    their similarity above each pair and ``names[p]`` (e.g. file names) below its two images.

    Size in inches: width ``cell * (2 * cols + (cols - 1) * GRID_GAP)`` with ``cols = min(P, per_row)``, height
    ``cell * (ceil(P / per_row) + GRID_TITLE [title])``; with no pair, a one-row note that none was found.
    """
    a, b = _images(images_a, 4, "images_a"), _images(images_b, 4, "images_b")
    sims = np.asarray(_numpy(similarities) if isinstance(similarities, Tensor) else similarities, dtype=float)
    p = a.shape[0]
    if b.shape[0] != p or sims.shape != (p,) or (names is not None and len(names) != p):
        raise ValueError(f"need one image_b, similarity (and name pair) per image_a ({p})")
    if per_row < 1 or cell <= 0 or dpi <= 0:
        raise ValueError(f"per_row, cell and dpi must be > 0, got {per_row}, {cell} and {dpi}")
    cols, rows = max(1, min(p, per_row)), max(1, -(-p // per_row))
    width = cell * (2 * cols + (cols - 1) * GRID_GAP)
    height = cell * (rows + (GRID_TITLE if title is not None else 0.0))
    fig = Figure(figsize=(width, height), dpi=dpi)
    top = height
    if title is not None:
        fig.text(0.5, 1 - 0.5 * GRID_TITLE * cell / height, title, ha="center", va="center", fontsize=8.5 * cell)
        top -= GRID_TITLE * cell
    if p == 0:
        fig.text(0.5, 0.5 * top / height, "no pair above the threshold", ha="center", va="center", fontsize=8 * cell)
    for n in range(p):
        left, row_top = (n % per_row) * (2 + GRID_GAP) * cell, top - (n // per_row) * cell
        below = (None, None) if names is None else tuple(Path(x).name[-24:] for x in names[n])
        for side, image in enumerate((a[n], b[n])):
            _image_cell(
                fig,
                left + side * cell,
                row_top,
                (width, height),
                image,
                above="",
                below=below[side],
                frame=None,
                cell=cell,
            )
        fig.text(
            (left + cell) / width,
            (row_top - 0.085 * cell) / height,
            f"cosine {sims[n]:.4f}",
            ha="center",
            va="center",
            fontsize=6.0 * cell,
        )
    return fig


def signal_neighbors_figure(
    query_series: Tensor | np.ndarray,
    neighbor_series: Tensor | np.ndarray,
    similarities: Tensor | np.ndarray,
    *,
    query_labels: Tensor | np.ndarray | None = None,
    neighbor_labels: Tensor | np.ndarray | None = None,
    query_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    max_channels: int = 3,
    title: str | None = None,
) -> Any:
    """Small multiples: a row per query ``query_series[r] (C, T)`` (black) with its ``k`` nearest series
    ``neighbor_series[r] (k, C, T)`` overlaid (thin, darker = nearer; another class dashed red), one column per
    channel up to ``max_channels``; the row title gives the query and its similarity range.
    """
    queries, neighbours = _numpy(query_series).astype(float), _numpy(neighbor_series).astype(float)
    sims = _numpy(similarities).astype(float)
    if queries.ndim != 3 or neighbours.ndim != 4:
        raise ValueError(
            f"need query_series (Q, C, T) and neighbor_series (Q, k, C, T), got {queries.shape} and {neighbours.shape}"
        )
    q, k = neighbours.shape[:2]
    if queries.shape[0] != q or neighbours.shape[2] != queries.shape[1] or sims.shape != (q, k):
        raise ValueError(
            f"query_series {queries.shape}, neighbor_series {neighbours.shape} and similarities {sims.shape} "
            "do not match: (Q, C, T), (Q, k, C, T'), (Q, k)"
        )
    if max_channels < 1:
        raise ValueError(f"max_channels must be >= 1, got {max_channels}")
    q_labels = None if query_labels is None else _numpy(query_labels).reshape(-1)
    n_labels = None if neighbor_labels is None else _numpy(neighbor_labels)
    cols = min(queries.shape[1], max_channels)
    fig = _figure(3.2 * cols, 1.5 * max(q, 1) + 0.4)
    axes = fig.subplots(max(q, 1), cols, squeeze=False)
    shades = _rank_shades(k)
    for r in range(q):
        name = query_names[r] if query_names is not None else f"query {r}"
        if q_labels is not None:
            name += f" ({_class_name(q_labels[r], class_names)})"
        span = f"nearest {sims[r, 0]:.3f} … {sims[r, -1]:.3f}" if k else "no neighbours"
        for c in range(cols):
            ax = axes[r, c]
            for j in range(k):
                wrong = n_labels is not None and q_labels is not None and int(n_labels[r, j]) != int(q_labels[r])
                ax.plot(
                    neighbours[r, j, c],
                    lw=0.8,
                    alpha=0.8,
                    color=_WRONG_COLOR if wrong else shades[j],
                    ls="--" if wrong else "-",
                )
            ax.plot(queries[r, c], lw=1.8, color="black")
            ax.set_title(f"{name}: {span}" if c == 0 else f"channel {c}", fontsize=8, loc="left")
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if r == q - 1:
                ax.set_xlabel("time step", fontsize=8)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return fig


def _rank_shades(k: int) -> list[Any]:
    cmap = colormaps["viridis"]
    return [cmap(0.1 + 0.75 * j / max(1, k - 1)) for j in range(k)]
