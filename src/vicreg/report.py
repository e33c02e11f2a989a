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
* ``diagnostics.png``: the collapse diagnostics logged during training, when there are any.

Matplotlib is used through its object API (``Figure``), which renders with Agg and never touches pyplot's
global state or the user's backend.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["covariance_spectrum", "make_report", "read_metrics", "spectral_effective_rank"]

DPI = 110


# ------------------------------------------------------------------------------------------------ numbers


@torch.no_grad()
def covariance_spectrum(z: Tensor) -> Tensor:
    """Eigenvalues of the covariance matrix of ``z`` ``(N, D)`` (float64, largest first, clamped at 0)."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) matrix of embeddings, got {tuple(z.shape)}")
    z = z.double()
    z = z - z.mean(0)
    cov = z.T @ z / (z.shape[0] - 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)


def spectral_effective_rank(eigenvalues: Tensor) -> float:
    """Effective rank of a covariance spectrum: ``exp(entropy(p))`` with ``p = sqrt(l) / sum(sqrt(l))``.

    ``sqrt(l)`` are the singular values of the centred embeddings (up to a common factor), so this is RankMe
    (:func:`vicreg.diagnostics.effective_rank`) of the centred embeddings. ``k`` equal eigenvalues and zeros
    give ``k``; a zero spectrum gives 1.
    """
    s = eigenvalues.double().clamp_min(0).sqrt()
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


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


def _series(rows: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    pts = [(r[x], r[key]) for r in rows if isinstance(r.get(key), int | float) and isinstance(r.get(x), int | float)]
    # a resumed run may log a step twice: keep the last value of each step
    last = dict(pts)
    xs = np.array(sorted(last), dtype=float)
    return xs, np.array([last[v] for v in sorted(last)], dtype=float)


# ------------------------------------------------------------------------------------------------ plots


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

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
    from vicreg.diagnostics import per_dim_std

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
    from matplotlib import colormaps

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


# ------------------------------------------------------------------------------------------------ report


def _test_embeddings(
    run_dir: Path, data: str | None, device: str, max_points: int, seed: int
) -> tuple[Tensor, Tensor, Tensor, tuple[str, ...], str, float]:
    """Representation, expander output and labels of (a seeded subset of) the test images."""
    from vicreg.distributed import DistInfo
    from vicreg.evaluate.data import load_eval_data
    from vicreg.evaluate.load import load_encoder
    from vicreg.evaluate.runner import encoder_features
    from vicreg.train import resolve_device

    dev = resolve_device(device, DistInfo())
    enc = load_encoder(run_dir, dev)
    if enc.config.data_root is not None and not data:
        os.environ["VICREG_DATA"] = os.pathsep.join(
            p for p in (str(enc.config.data_root), os.environ.get("VICREG_DATA", "")) if p
        )
    ev = load_eval_data(data or enc.config.data, size=enc.image_size, channels=enc.channels, seed=seed)
    test = ev.test
    if len(test) > max_points:
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:max_points].sort().values
        test = test.subset(idx)
    assert test.labels is not None
    both, _ = encoder_features(
        enc, test.images, which="expander", cache_dir=run_dir / "features", device=dev, labels=test.labels
    )
    dim = enc.model.feature_dim
    return both[:, :dim], both[:, dim:], test.labels.cpu(), test.classes, test.name, enc.config.loss.gamma


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
    import yaml

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run folder (the --out of vicreg train)")
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
    plots.append(("kNN accuracy over epochs", "knn.png", "Online monitor: at most 10k train / 2k test images."))
    if plot_diagnostics(rows, out / "diagnostics.png") is not None:
        plots.append(("Collapse diagnostics during training", "diagnostics.png", ""))

    eval_data = data or (eval_report["data"]["source"] if eval_report else None)
    ranks: dict[str, float] = {}
    try:
        h, z, labels, classes, name, gamma = _test_embeddings(run, eval_data, device, max_points, seed)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        notes.append(f"Embedding plots skipped: {err}")
    else:
        parts = {"representation": h, "expander output": z}
        plot_std_hist(parts, gamma, out / "std_hist.png")
        plots.append(("Per-dimension standard deviation", "std_hist.png", f"{len(labels)} images of {name}."))
        _, ranks = plot_spectrum(parts, out / "spectrum.png")
        plots.append(("Covariance spectrum", "spectrum.png", f"{len(labels)} images of {name}."))
        coords, method = embedding_map(h, seed)
        plot_embedding_map(coords, labels.numpy(), classes, method, out / "embedding_map.png")
        plots.append((f"{method} map of the representation", "embedding_map.png", f"{len(labels)} images of {name}."))

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
    import yaml

    from vicreg.evaluate.runner import markdown_table

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
