"""Label-free quality measures of a frozen encoder: did pretraining work, without a single label?

* :func:`rankme` -- RankMe (Garrido et al., "RankMe: Assessing the Downstream Performance of Pretrained
  Self-Supervised Representations by Their Rank", ICML 2023, eq. 1): the exponential of the entropy of the
  normalised singular values of the representation matrix, ``p_k = sigma_k / ||sigma||_1 + eps``, eps = 1e-7.
* :func:`lidar` -- LiDAR (Thilak et al., "LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL
  Architectures", ICLR 2024, sec. 3): each clean sample's ``q`` augmented copies form a surrogate class; the
  between-class covariance ``S_b`` and the within-class covariance ``S_w + delta I`` (delta = 1e-4) define the
  LDA matrix ``S_w^-1/2 S_b S_w^-1/2``, whose eigenvalues get the same smooth rank as RankMe (eps = 1e-8).
  Unlike RankMe it needs invariance: directions in which the copies of one sample spread as much as different
  samples do count for little, so noise an encoder keeps from its random initialisation does not earn rank.
* :func:`alpha_req` -- alpha-ReQ (Agrawal et al., "alpha-ReQ: Assessing Representation Quality in
  Self-Supervised Learning by measuring eigenspectrum decay", NeurIPS 2022): the exponent ``alpha`` of the
  power law ``lambda_i ~ i^-alpha`` fitted (least squares in log-log) to the covariance eigenspectrum; the paper
  finds good representations near ``alpha = 1`` (smaller: noise-like, larger: collapsing).
* :func:`linear_cka` / :func:`moved_from_init` -- how far training moved the representation from the random
  initialisation. A barely trained encoder keeps the high rank of its random initialisation, so a rank alone
  rewards not training (seen on Fashion-MNIST, issue 24); comparing with the random-init encoder's score on the
  same rows says whether the rank was earned.

All measures are pure functions of tensors that accumulate in float64 and return Python floats.
:func:`label_free_scores` computes all of them for one encoder on a fixed, seeded sample of held-out rows; it
knows nothing of the modality: the caller passes the encoder's feature function and the views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "CRITERIA",
    "LIDAR_DELTA",
    "LIDAR_EPS",
    "RANKME_EPS",
    "alpha_req",
    "covariance_eigenvalues",
    "format_label_free",
    "label_free_scores",
    "lidar",
    "linear_cka",
    "moved_from_init",
    "rankme",
    "selection_score",
    "smooth_rank",
]

RANKME_EPS = 1e-7
"""Garrido et al. 2023, sec. 3: the epsilon added to the normalised singular values."""
LIDAR_DELTA = 1e-4
"""Thilak et al. 2024, eq. 3: the ridge added to the within-class covariance so that it can be inverted."""
LIDAR_EPS = 1e-8
"""Thilak et al. 2024, eq. 5: the epsilon added to the normalised eigenvalues of the LDA matrix."""

Criterion = Literal["lidar", "rankme", "alpha_req", "rankme_vs_init", "lidar_vs_init", "rankme_moved"]
CRITERIA: tuple[str, ...] = ("lidar", "rankme", "alpha_req", "rankme_vs_init", "lidar_vs_init", "rankme_moved")
"""Names :func:`selection_score` accepts (higher is better for each, after its transformation)."""


def _matrix(z: Tensor, what: str = "representation") -> Tensor:
    if not isinstance(z, Tensor) or z.ndim != 2:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"the {what} must be a 2-D (samples, dim) tensor, got {shape}")
    if z.shape[0] < 2 or z.shape[1] < 1:
        raise ValueError(f"the {what} needs at least 2 samples and 1 dimension, got {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError(f"the {what} holds NaN or infinite values; the encoder has diverged")
    return z.detach().to("cpu", torch.float64)


def smooth_rank(values: Tensor, eps: float) -> float:
    """``exp(-sum_k p_k log p_k)`` with ``p_k = v_k / ||v||_1 + eps`` (RankMe's eq. 1; LiDAR's eq. 5).

    ``values`` are non-negative (singular values, eigenvalues). All zero: 1 (nothing is spanned).
    """
    v = values.detach().to("cpu", torch.float64).clamp_min(0)
    total = v.sum()
    if not total > 0:
        return 1.0
    p = v / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def rankme(z: Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe of the representation matrix ``z`` ``(N, D)``: between about 1 and ``min(N, D)``.

    Uncentred, as in the paper. Use ``N`` well above ``D`` (the paper: 25 600 rows): the rank is bounded by
    ``min(N, D)`` and a finite Gaussian sample is not perfectly isotropic.
    """
    return smooth_rank(torch.linalg.svdvals(_matrix(z)), eps)


@torch.no_grad()
def lidar(copies: Tensor, delta: float = LIDAR_DELTA, eps: float = LIDAR_EPS) -> float:
    """LiDAR of ``copies`` ``(n, q, D)``: the features of ``q >= 2`` augmented copies of each of ``n >= 2`` samples.

    ``S_b = 1/(n-1) sum_i (mu_i - mu)(mu_i - mu)^T`` over the per-sample means ``mu_i``,
    ``S_w = 1/(n (q-1)) sum_ij (e_ij - mu_i)(e_ij - mu_i)^T + delta I``, and the smooth rank of the eigenvalues
    of ``S_w^-1/2 S_b S_w^-1/2`` (those of ``S_w^-1 S_b``). At most ``min(n - 1, D)``.
    """
    if not isinstance(copies, Tensor) or copies.ndim != 3:
        shape = tuple(copies.shape) if isinstance(copies, Tensor) else type(copies).__name__
        raise ValueError(f"LiDAR needs (samples, copies, dim) features, got {shape}")
    n, q, d = copies.shape
    if n < 2 or q < 2:
        raise ValueError(f"LiDAR needs at least 2 samples with at least 2 augmented copies each, got {n} x {q}")
    if delta <= 0:
        raise ValueError(f"delta must be > 0 (it makes the within-class covariance invertible), got {delta}")
    e = _matrix(copies.reshape(n * q, d), "augmented features").reshape(n, q, d)
    means = e.mean(dim=1)  # (n, D): the surrogate classes' means
    between = means - means.mean(dim=0)
    s_b = between.T @ between / (n - 1)
    within = (e - means[:, None]).reshape(n * q, d)
    s_w = within.T @ within / (n * (q - 1)) + delta * torch.eye(d, dtype=torch.float64)
    w_vals, w_vecs = torch.linalg.eigh(s_w)
    inv_sqrt = (w_vecs / w_vals.sqrt()) @ w_vecs.T
    lda = inv_sqrt @ s_b @ inv_sqrt
    return smooth_rank(torch.linalg.eigvalsh((lda + lda.T) / 2), eps)


@torch.no_grad()
def covariance_eigenvalues(z: Tensor) -> Tensor:
    """Eigenvalues of the covariance of ``z`` ``(N, D)``, float64, largest first, clamped at 0."""
    x = _matrix(z)
    x = x - x.mean(dim=0)
    # the singular values of the centred rows: exact where forming X^T X would square the condition number
    s = torch.linalg.svdvals(x)
    return (s * s / (x.shape[0] - 1)).clamp_min(0)


@torch.no_grad()
def alpha_req(z: Tensor, first: int = 1, last: int | None = None, floor: float = 1e-12) -> float:
    """alpha-ReQ: the decay exponent ``alpha`` of ``lambda_i ~ c i^-alpha`` over the eigenspectrum of ``z``.

    Least squares of ``log lambda_i`` on ``log i`` for the ranks ``first..last`` (1-based, inclusive; default:
    every eigenvalue above ``floor`` times the largest, at most ``min(N - 1, D)`` of them). NaN when fewer than
    two eigenvalues are left (a collapsed representation).
    """
    lam = covariance_eigenvalues(z)
    if first < 1:
        raise ValueError(f"first must be >= 1 (ranks count from 1), got {first}")
    keep = int((lam > floor * lam[0]).sum()) if lam[0] > 0 else 0
    stop = keep if last is None else min(last, keep)
    if stop - first + 1 < 2:
        return math.nan
    ranks = torch.arange(first, stop + 1, dtype=torch.float64)
    x, y = ranks.log(), lam[first - 1 : stop].log()
    x, y = x - x.mean(), y - y.mean()
    return float(-(x * y).sum() / (x * x).sum())


@torch.no_grad()
def linear_cka(a: Tensor, b: Tensor) -> float:
    """Linear CKA (Kornblith et al., ICML 2019) between two representations of the same ``N`` rows: 1 for the
    same representation up to rotation and scale, near 0 for unrelated ones."""
    x, y = _matrix(a), _matrix(b, "second representation")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares representations of the same rows, got {x.shape[0]} and {y.shape[0]} rows")
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    cross = (y.T @ x).square().sum()
    norm = (x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt()
    return float(cross / norm) if norm > 0 else 0.0


def moved_from_init(scores: Mapping[str, float], init_scores: Mapping[str, float]) -> dict[str, float]:
    """Each measure relative to the random-init encoder's on the same rows: ``<name>_vs_init = score / init``.

    Above 1: training earned rank the initialisation did not have; about 1: the encoder barely moved (or moved
    without gaining); below 1: training lost rank (collapse). Measures missing from either side, or with a zero
    or non-finite init score, are left out.
    """
    out = {}
    for name in ("rankme", "lidar", "alpha_req"):
        value, init = scores.get(name), init_scores.get(name)
        if value is None or init is None or not math.isfinite(init) or init == 0 or not math.isfinite(value):
            continue
        out[f"{name}_vs_init"] = float(value) / float(init)
    return out


def selection_score(scores: Mapping[str, float], criterion: str) -> float:
    """The number a search maximises for ``criterion`` (one of :data:`CRITERIA`), from :func:`label_free_scores`.

    ``alpha_req`` becomes ``-|alpha - 1|`` (the paper's best is near 1); ``rankme_moved`` is RankMe times
    ``1 - CKA`` to the random-init representation (rank that training earned). NaN when a needed score is absent.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown label-free criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion == "alpha_req":
        alpha = scores.get("alpha_req", math.nan)
        return -abs(alpha - 1.0)
    if criterion == "rankme_moved":
        return scores.get("rankme", math.nan) * (1.0 - scores.get("cka_to_init", math.nan))
    return float(scores.get(criterion, math.nan))


Views = Callable[[Tensor, torch.Generator], Tensor | tuple[Tensor, ...] | list[Tensor]]


def _augmented(
    encode: Callable[[Tensor], Tensor],
    sample: Tensor,
    views: Views,
    generator: torch.Generator,
    copies: int,
    batch: int,
) -> Tensor:
    """``(n, copies, D)`` features of augmented copies; each call of ``views`` may give one copy or a pair."""
    per_chunk = []
    for start in range(0, sample.shape[0], batch):
        rows = sample[start : start + batch]
        got: list[Tensor] = []
        while len(got) < copies:
            out = views(rows, generator)
            got.extend([out] if isinstance(out, Tensor) else list(out))
        per_chunk.append(torch.stack([encode(v).detach().float().cpu() for v in got[:copies]], dim=1))
    return torch.cat(per_chunk)


@torch.no_grad()
def label_free_scores(
    encode: Callable[[Tensor], Tensor],
    sample: Tensor,
    views: Views,
    generator: torch.Generator,
    *,
    prepare: Callable[[Tensor], Tensor] | None = None,
    copies: int = 8,
    lidar_rows: int | None = 1000,
    batch_size: int = 512,
    init_encode: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Every label-free measure of one frozen encoder on a fixed sample of held-out rows.

    ``encode``: a batch as the encoder takes it -> features ``(B, D)`` (e.g. ``model.embed`` in eval mode).
    ``sample``: the held-out rows as the data holds them (the same rows every time: seed their choice).
    ``prepare``: those rows -> the encoder's clean input (e.g. normalisation; default: as they are).
    ``views``: ``(rows, generator)`` -> one augmented copy or a pair of copies, as the encoder takes them (the
    training views); ``generator`` is used as given, so seed it the same way for every encoder compared.
    ``copies``: augmented copies per row for LiDAR; ``lidar_rows``: LiDAR uses the first rows only (``None``:
    all), since it encodes ``copies`` times as many.
    ``init_encode``: the same architecture at its random initialisation; then the same measures of it (same
    rows, same views: the generator is rewound) come back as ``<name>_init``, with :func:`moved_from_init`'s
    ratios and ``cka_to_init``.

    Returns ``rankme``, ``alpha_req`` (on the clean rows), ``lidar`` (on the copies), ``rows`` and ``copies``.
    """
    if copies < 2:
        raise ValueError(f"copies must be >= 2 (LiDAR's surrogate classes need two views each), got {copies}")
    if sample.shape[0] < 2:
        raise ValueError(f"label-free measures need at least 2 held-out rows, got {sample.shape[0]}")
    prep = prepare or (lambda x: x)
    lidar_sample = sample if lidar_rows is None else sample[:lidar_rows]
    start_state = generator.get_state()

    def measure(fn: Callable[[Tensor], Tensor]) -> tuple[dict[str, float], Tensor]:
        feats = torch.cat(
            [fn(prep(sample[i : i + batch_size])).detach().float().cpu() for i in range(0, sample.shape[0], batch_size)]
        )
        generator.set_state(start_state)
        augmented = _augmented(fn, lidar_sample, views, generator, copies, batch_size)
        return {"rankme": rankme(feats), "alpha_req": alpha_req(feats), "lidar": lidar(augmented)}, feats

    scores, feats = measure(encode)
    out: dict[str, float] = {**scores, "rows": float(sample.shape[0]), "copies": float(copies)}
    if init_encode is not None:
        init_scores, init_feats = measure(init_encode)
        out.update({f"{k}_init": v for k, v in init_scores.items()})
        out.update(moved_from_init(scores, init_scores))
        out["cka_to_init"] = linear_cka(feats, init_feats)
    return out


def label_free_table(section: Mapping[str, object]) -> list[list[str]]:
    """The label-free section of eval.json (``vicreg``, ``random_init``, ``vs_init``) as rows of text, the first
    the header; empty when the section holds no scores."""
    ours = section.get("vicreg")
    init = section.get("random_init")
    ratio = section.get("vs_init")
    if not isinstance(ours, Mapping):
        return []
    init = init if isinstance(init, Mapping) else {}
    ratio = ratio if isinstance(ratio, Mapping) else {}
    rows = [["label-free (no labels)", "vicreg", "random_init", "vicreg / random_init"]]
    for name in ("rankme", "lidar", "alpha_req"):
        cells = [ours.get(name), init.get(name), ratio.get(f"{name}_vs_init")]
        rows.append([name, *("-" if not isinstance(v, int | float) else f"{v:.4g}" for v in cells)])
    return rows


def format_label_free(section: Mapping[str, object], markdown: bool = False) -> str:
    """The label-free section of eval.json (``vicreg``, ``random_init``, ``vs_init``, ``cka_to_init``) as a
    plain-text table (``vicreg eval``) or a Markdown one (``vicreg report``)."""
    rows = label_free_table(section)
    if not rows:
        return ""
    header = rows[0]
    cka = section.get("cka_to_init")
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|---|---:|---:|---:|")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        pad = [str.ljust] + [str.rjust] * (len(header) - 1)
        lines = ["  ".join(p(c, w) for p, c, w in zip(pad, r, widths, strict=True)) for r in rows]
    if isinstance(cka, int | float):
        lines.append(("\n" if markdown else "") + f"linear CKA to the random-init representation: {cka:.3g}")
    return "\n".join(lines)
