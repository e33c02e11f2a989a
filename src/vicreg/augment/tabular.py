"""Two augmented views of a batch of table rows ``(N, F)``, with per-sample parameters.

:class:`TableViews` is fitted on the training table (its rows are the empirical marginals and give the
standardisation statistics). Each view applies, in this order:

==================  =================================================================================
operation           what each sample draws
==================  =================================================================================
corruption (SCARF)  exactly ``floor(corrupt_rate * F)`` features, chosen uniformly; each is replaced by
                    that feature's value in a uniformly drawn training row, i.e. a draw from the
                    feature's empirical marginal (Bahri et al., SCARF, ICLR 2022)
standardisation     ``(x - mean) / std`` per feature, with the training table's statistics
Gaussian noise      standard deviation ``noise_std`` on every standardised value
feature masking     each feature set to zero (the feature's mean) with probability ``mask_p``
==================  =================================================================================

SCARF pairs an uncorrupted anchor with a corrupted view: ``TableViews(table, view_a={"corrupt_rate": 0})``.
By default both views are corrupted (rate 0.6, SCARF's default). All draws are batched tensor operations; with
``generator=`` the views are reproducible, drawn on the generator's device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from vicreg.deprecation import renamed

__all__ = [
    "TABLE_VIEW",
    "TableParams",
    "TableViewConfig",
    "TableViews",
    "TableViewsConfig",
    "apply_table_view",
    "sample_table_params",
    "table_views",
]


@dataclass(frozen=True)
class TableViewConfig:
    """The random augmentation of one view of table rows.

    Attributes:
        corrupt_rate: fraction of each row's features replaced by draws from their empirical marginals.
        noise_std: standard deviation of the Gaussian noise added to the standardised values (0 disables).
        mask_p: probability of setting each feature to zero after standardisation (0 disables).
    """

    corrupt_rate: float = 0.6
    noise_std: float = 0.0
    mask_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("corrupt_rate", "mask_p"):
            p = float(getattr(self, name))
            if not 0 <= p <= 1:
                raise ValueError(f"TableViewConfig.{name} is a fraction and must be in [0, 1], got {p}")
            object.__setattr__(self, name, p)
        s = float(self.noise_std)
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"TableViewConfig.noise_std must be a finite number >= 0, got {s}")
        object.__setattr__(self, "noise_std", s)


TABLE_VIEW = TableViewConfig()
"""The default view (SCARF corruption at rate 0.6), used for both views unless overridden."""


class TableParams(NamedTuple):
    """The random parameters of one table view, one row per sample."""

    corrupt: Tensor  # (N, F) bool, features replaced
    source_rows: Tensor  # (N, F) int64, the training row each replacement is read from
    noise: Tensor  # (N, F) additive noise (standardised units)
    mask: Tensor  # (N, F) bool, features set to zero


def sample_table_params(
    cfg: TableViewConfig,
    n: int,
    features: int,
    table_rows: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TableParams:
    """Draw one view's parameters for ``n`` rows of ``features`` features, replacements from ``table_rows`` rows.

    The draws happen on ``device`` (default: the generator's device, else the CPU).
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    g = generator
    q = math.floor(cfg.corrupt_rate * features)
    chosen = torch.rand(n, features, generator=g, device=device).argsort(dim=1)[:, :q]
    corrupt = torch.zeros(n, features, dtype=torch.bool, device=device).scatter_(1, chosen, True)
    rows = torch.randint(0, table_rows, (n, features), generator=g, device=device)
    noise = cfg.noise_std * torch.randn(n, features, generator=g, device=device)
    mask = torch.rand(n, features, generator=g, device=device) < cfg.mask_p
    return TableParams(corrupt, rows, noise, mask)


def apply_table_view(x: Tensor, params: TableParams, table: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Apply one view to raw rows ``x`` ``(N, F)``; ``table`` ``(M, F)`` holds the training rows, ``mean`` and
    ``std`` ``(F,)`` its statistics. Returns a new standardised tensor."""
    p = TableParams(*(t.to(x.device, non_blocking=x.device.type != "cpu") for t in params))
    replacement = table.gather(0, p.source_rows)  # [n, f] = table[rows[n, f], f]
    v = torch.where(p.corrupt, replacement.to(x.dtype), x)
    v = (v - mean) / std
    v += p.noise.to(v.dtype)
    return v.masked_fill_(p.mask, 0.0)


def _view_config(shared: Mapping[str, Any], own: TableViewConfig | Mapping[str, Any] | None) -> TableViewConfig:
    base = TABLE_VIEW
    if isinstance(own, TableViewConfig):
        base, own = own, None
    names = {f.name for f in fields(TableViewConfig)}
    for overrides in (shared, own or {}):
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown table view option(s) {unknown}; the options are {sorted(names)}")
        base = replace(base, **overrides)
    return base


class TableViews:
    """The two augmented views of a batch of table rows, fitted on the training table.

    ``views = TableViews(train_x); v_a, v_b = views(x)`` with ``x`` float ``(N, F)`` raw rows: two standardised
    float batches ``(N, F)``. The views are made on ``x``'s device; :meth:`to` moves the fitted table there.

    Args:
        table: the training rows ``(M, F)`` (tensor or array): the empirical marginals of the corruption and the
            standardisation statistics (features with zero spread get std 1). It is kept, as float32.
        view_a, view_b: a :class:`TableViewConfig` or a mapping of fields to override for that view only.
        **overrides: :class:`TableViewConfig` fields for both views, e.g. ``corrupt_rate=0.3``.
    """

    def __init__(
        self,
        table: Any,
        *,
        view_a: TableViewConfig | Mapping[str, Any] | None = None,
        view_b: TableViewConfig | Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        t = torch.as_tensor(table)
        if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 1:
            raise ValueError(
                f"TableViews needs the training table as (rows, features) with at least 2 rows, got shape "
                f"{tuple(t.shape)}"
            )
        t = t.float()
        if not bool(torch.isfinite(t).all()):
            raise ValueError("the training table holds NaN or infinite values; impute or drop them first")
        self.table = t
        self.mean = t.mean(0)
        std = t.std(0, unbiased=False)
        self.std = torch.where(std > 0, std, torch.ones_like(std))
        self.view_a = _view_config(overrides, view_a)
        self.view_b = _view_config(overrides, view_b)

    @property
    def features(self) -> int:
        return self.table.shape[1]

    def to(self, device: torch.device | str) -> TableViews:
        """Move the fitted table and statistics to ``device`` (in place); returns ``self``."""
        self.table, self.mean, self.std = (t.to(device) for t in (self.table, self.mean, self.std))
        return self

    def _check(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.features or not x.is_floating_point():
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"TableViews was fitted on {self.features} features and expects float (N, {self.features}) rows, "
                f"got {desc}"
            )
        if x.device != self.table.device:
            self.to(x.device)
        return x.float()

    def standardize(self, x: Tensor) -> Tensor:
        """The rows standardised with the training table's statistics, unaugmented (for evaluation)."""
        x = self._check(x)
        return (x - self.mean) / self.std

    def view(self, x: Tensor, cfg: TableViewConfig, generator: torch.Generator | None = None) -> Tensor:
        """One view of the raw rows ``x`` with configuration ``cfg``."""
        x = self._check(x)
        device = generator.device if generator is not None else x.device
        params = sample_table_params(cfg, x.shape[0], self.features, self.table.shape[0], generator, device)
        return apply_table_view(x, params, self.table, self.mean, self.std)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The two views ``(v_a, v_b)`` of a batch; ``generator`` makes them reproducible."""
        return self.view(x, self.view_a, generator), self.view(x, self.view_b, generator)

    def __repr__(self) -> str:
        return (
            f"TableViews(rows={self.table.shape[0]}, features={self.features},\n  view_a={self.view_a},\n"
            f"  view_b={self.view_b})"
        )


if TYPE_CHECKING:  # TableViews was called TabularViews (one release)
    TabularViews = TableViews
else:
    __getattr__ = renamed(__name__, {"TabularViews": TableViews})


# ------------------------------------------------------------------------------------------------ run config


@dataclass(frozen=True)
class TableViewsConfig:
    """The table views of a training run (``table_views`` in the run config)."""

    corrupt_rate: float = 0.6
    """Fraction of each row's features replaced by draws from their empirical marginals (SCARF: 0.6)."""
    noise_std: float = 0.0
    """Standard deviation of Gaussian noise on the standardised values."""
    mask_p: float = 0.0
    """Probability of zeroing each standardised feature."""
    anchor_a: bool = False
    """View A uncorrupted (SCARF's anchor); by default both views are corrupted."""

    def __post_init__(self) -> None:
        try:
            self.view_config()
        except ValueError as err:
            raise ValueError(f"table_views: {err}") from err

    def view_config(self) -> TableViewConfig:
        """The :class:`TableViewConfig` of these settings (view B's; view A's with anchor_a)."""
        return TableViewConfig(corrupt_rate=self.corrupt_rate, noise_std=self.noise_std, mask_p=self.mask_p)


def table_views(cfg: TableViewsConfig, table: Any) -> TableViews:
    """The :class:`TableViews` of a run's settings, fitted on the training ``table``; with ``anchor_a``, view A
    is the uncorrupted anchor (SCARF)."""
    v = cfg.view_config()
    view_a = TableViewConfig(corrupt_rate=0.0, noise_std=v.noise_std, mask_p=v.mask_p) if cfg.anchor_a else v
    return TableViews(table, view_a=view_a, view_b=v)
