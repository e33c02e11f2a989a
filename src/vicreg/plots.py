"""The plots of ``vicreg report``, each a pure function from numbers to one PNG file.

Matplotlib is used through its object API (``Figure``), which renders with Agg and never touches pyplot's
global state or the user's backend. :mod:`vicreg.report` decides what to plot and assembles the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from vicreg.diagnostics import covariance_spectrum, per_dim_std, spectral_effective_rank

__all__ = [
    "embedding_map",
    "plot_diagnostics",
    "plot_embedding_map",
    "plot_knn",
    "plot_loss",
    "plot_lr",
    "plot_spectrum",
    "plot_std_hist",
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
    for key, label in (("knn.top1", "top-1"), ("knn.top5", "top-5")):
        x, y = _series(rows, key, x="epoch")
        if len(x):
            ax.plot(x, y, marker="o", ms=4, lw=1.5, label=f"online monitor (subset), {label}")
            drawn = True
    if final is not None:
        ax.plot([final[0]], [final[1]], marker="*", ms=12, ls="none", color="tab:red", label=final[2])
    if drawn or final is not None:
        epochs = [*_series(rows, "knn.top1", x="epoch")[0].tolist(), *([final[0]] if final else [])]
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
