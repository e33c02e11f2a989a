"""Two augmented views of a batch of 1-D signals / time series ``(N, C, T)``, with per-sample parameters.

:class:`SignalViews` standardises each channel with the dataset's statistics, then applies, in this order:

=====================  ================================================================================
operation              what each sample draws
=====================  ================================================================================
random crop + resize   a window of ``crop_scale`` x ``T`` steps at a random start, linearly resampled to
                       the output length (the 1-D random resized crop)
scaling                one factor per channel from ``N(1, scale_std)``
magnitude warp         a smooth curve per channel through ``warp_knots`` knots from ``N(1, warp_std)``,
                       cubic-interpolated over time, multiplied in (Um et al., ICMI 2017)
jitter                 Gaussian noise of standard deviation ``jitter_std`` on every value
time masking           with probability ``mask_p``, a window of ``mask_size`` x output-length steps (at
                       least one) set to zero (the channel mean after standardisation), all channels
channel dropout        each channel zeroed with probability ``channel_drop_p``; a sample keeps all its
                       channels when every one of them was drawn
=====================  ================================================================================

Every draw is one tensor operation for the whole batch (no per-sample Python); with ``generator=`` the views
are reproducible, drawn on the generator's device as :class:`vicreg.ImageViews` does. There is no paper recipe
for signals: both views default to the same :data:`SIGNAL_VIEW`; override either per view.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SIGNAL_VIEW",
    "SignalParams",
    "SignalViewConfig",
    "SignalViews",
    "SignalViewsConfig",
    "apply_signal_view",
    "sample_signal_params",
    "signal_views",
]


def _pair(name: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"SignalViewConfig.{name} must be a (min, max) pair, got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not (math.isfinite(a) and math.isfinite(b) and lo < a <= b <= hi):
        raise ValueError(f"SignalViewConfig.{name} must satisfy {lo} < min <= max <= {hi}, got {value!r}")
    return a, b


@dataclass(frozen=True)
class SignalViewConfig:
    """The random augmentation of one signal view (amplitudes are in standardised units).

    Attributes:
        crop_scale: range of the cropped window's length as a fraction of the signal (1.0: no crop).
        scale_std: standard deviation of the per-channel amplitude factor around 1 (0 disables).
        warp_std: standard deviation of the magnitude-warp knots around 1 (0 disables).
        warp_knots: knots of the magnitude-warp curve, evenly spaced over the signal (at least 2).
        jitter_std: standard deviation of the additive Gaussian noise (0 disables).
        mask_p: probability of masking one time window.
        mask_size: range of the masked window's length as a fraction of the output length.
        channel_drop_p: probability of zeroing each channel.
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)
    scale_std: float = 0.1
    warp_std: float = 0.2
    warp_knots: int = 4
    jitter_std: float = 0.1
    mask_p: float = 0.5
    mask_size: tuple[float, float] = (0.05, 0.2)
    channel_drop_p: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", _pair("crop_scale", self.crop_scale, 0.0, 1.0))
        object.__setattr__(self, "mask_size", _pair("mask_size", self.mask_size, 0.0, 1.0))
        for name in ("scale_std", "warp_std", "jitter_std"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"SignalViewConfig.{name} must be a finite number >= 0, got {v}")
            object.__setattr__(self, name, v)
        for name in ("mask_p", "channel_drop_p"):
            p = float(getattr(self, name))
            if not 0 <= p <= 1:
                raise ValueError(f"SignalViewConfig.{name} is a probability and must be in [0, 1], got {p}")
            object.__setattr__(self, name, p)
        if not isinstance(self.warp_knots, int) or self.warp_knots < 2:
            raise ValueError(f"SignalViewConfig.warp_knots must be an int >= 2, got {self.warp_knots!r}")


SIGNAL_VIEW = SignalViewConfig()
"""The default view, used for both views unless overridden."""


class SignalParams(NamedTuple):
    """The random parameters of one signal view, one row per sample."""

    crop_start: Tensor  # (N,) int64, first input step of the window
    crop_length: Tensor  # (N,) int64, steps in the window (>= 1)
    scale: Tensor  # (N, C) amplitude factor
    warp_knots: Tensor  # (N, C, K) knot values of the magnitude-warp curve
    noise: Tensor  # (N, C, L) additive noise at the output length L
    mask: Tensor  # (N,) bool, whether a time window is masked
    mask_start: Tensor  # (N,) int64, first output step of the masked window
    mask_length: Tensor  # (N,) int64, length of the masked window (>= 1)
    channel_drop: Tensor  # (N, C) bool, channels set to zero


def _lengths(n: int, total: int, frac: tuple[float, float], generator: torch.Generator | None, device: Any) -> Tensor:
    """Window lengths in steps, uniform between ``frac`` of ``total`` (rounded, clamped to ``[1, total]``)."""
    lo = max(1, min(total, round(frac[0] * total)))
    hi = max(lo, min(total, round(frac[1] * total)))
    return torch.randint(lo, hi + 1, (n,), generator=generator, device=device)


def _starts(n: int, total: int, length: Tensor, generator: torch.Generator | None, device: Any) -> Tensor:
    """Uniform starts in ``[0, total - length]`` for each sample."""
    u = torch.rand(n, generator=generator, device=device)
    return (u * (total - length + 1).to(u.dtype)).long().clamp_(max=total - length)


def sample_signal_params(
    cfg: SignalViewConfig,
    n: int,
    channels: int,
    length: int,
    out_length: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> SignalParams:
    """Draw one view's parameters for ``n`` signals of ``channels x length`` steps, output ``out_length`` steps.

    The draws happen on ``device`` (default: the generator's device, else the CPU).
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    out_length = length if out_length is None else out_length
    g = generator
    crop_length = _lengths(n, length, cfg.crop_scale, g, device)
    crop_start = _starts(n, length, crop_length, g, device)
    scale = 1 + cfg.scale_std * torch.randn(n, channels, generator=g, device=device)
    knots = 1 + cfg.warp_std * torch.randn(n, channels, cfg.warp_knots, generator=g, device=device)
    noise = cfg.jitter_std * torch.randn(n, channels, out_length, generator=g, device=device)
    mask = torch.rand(n, generator=g, device=device) < cfg.mask_p
    mask_length = _lengths(n, out_length, cfg.mask_size, g, device)
    mask_start = _starts(n, out_length, mask_length, g, device)
    drop = torch.rand(n, channels, generator=g, device=device) < cfg.channel_drop_p
    drop &= ~drop.all(dim=1, keepdim=True)  # never blank a whole sample
    return SignalParams(crop_start, crop_length, scale, knots, noise, mask, mask_start, mask_length, drop)


def _crop_resize(x: Tensor, start: Tensor, length: Tensor, out_length: int) -> Tensor:
    """Each sample's window ``[start, start + length)`` linearly resampled to ``out_length`` steps.

    Output step ``o`` reads input position ``start + (o + 0.5) * length / out_length - 0.5`` (half-step
    centres, as ``F.interpolate(mode="linear", align_corners=False)`` on the cropped window), kept inside the
    window.
    """
    o = torch.arange(out_length, device=x.device, dtype=x.dtype) + 0.5
    ln = length.to(x.device, x.dtype)[:, None]
    pos = (o * (ln / out_length) - 0.5).clamp_(min=0)
    pos = torch.minimum(pos, ln - 1) + start.to(x.device, x.dtype)[:, None]  # (N, L)
    i0 = pos.floor().long().clamp_(0, x.shape[-1] - 1)
    i1 = (i0 + 1).clamp_(max=x.shape[-1] - 1)
    w = (pos - i0.to(x.dtype))[:, None, :]
    c = x.shape[1]
    x0 = x.gather(2, i0[:, None, :].expand(-1, c, -1))
    x1 = x.gather(2, i1[:, None, :].expand(-1, c, -1))
    return torch.lerp(x0, x1, w)


def _warp_curves(knots: Tensor, out_length: int) -> Tensor:
    """Smooth curves ``(N, C, L)`` through ``knots`` ``(N, C, K)`` spread evenly over the output, bicubic."""
    n, c, k = knots.shape
    curves = F.interpolate(knots.reshape(n * c, 1, 1, k), size=(1, out_length), mode="bicubic", align_corners=True)
    return curves.reshape(n, c, out_length)


def apply_signal_view(x: Tensor, params: SignalParams, out_length: int) -> Tensor:
    """Apply one view to a standardised float batch ``(N, C, T)``; returns a new ``(N, C, out_length)`` tensor."""
    p = SignalParams(*(t.to(x.device, non_blocking=x.device.type != "cpu") for t in params))
    v = _crop_resize(x, p.crop_start, p.crop_length, out_length)
    v *= p.scale.to(v.dtype)[:, :, None]
    v *= _warp_curves(p.warp_knots.to(v.dtype), out_length)
    v += p.noise.to(v.dtype)
    steps = torch.arange(out_length, device=v.device)
    window = (steps >= p.mask_start[:, None]) & (steps < (p.mask_start + p.mask_length)[:, None]) & p.mask[:, None]
    keep = ~(window[:, None, :] | p.channel_drop[:, :, None])  # (N, C, L)
    return v.mul_(keep)


def _view_config(shared: Mapping[str, Any], own: SignalViewConfig | Mapping[str, Any] | None) -> SignalViewConfig:
    base = SIGNAL_VIEW
    if isinstance(own, SignalViewConfig):
        base, own = own, None
    names = {f.name for f in fields(SignalViewConfig)}
    for overrides in (shared, own or {}):
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown signal view option(s) {unknown}; the options are {sorted(names)}")
        base = replace(base, **overrides)
    return base


class SignalViews:
    """The two augmented views of a batch of signals ``(N, C, T)`` (float), on the batch's device.

    ``views = SignalViews(mean=m, std=s); v_a, v_b = views(x)``: two float batches ``(N, C, length)``. See
    the module doc for the operations and their order.

    Args:
        length: output length (default: the input's).
        view_a, view_b: a :class:`SignalViewConfig` or a mapping of fields to override for that view only.
        mean, std: per-channel statistics for standardisation (one value, or one per channel); the default
            leaves the values as they are.
        **overrides: :class:`SignalViewConfig` fields for both views, e.g. ``jitter_std=0.05``.
    """

    def __init__(
        self,
        length: int | None = None,
        *,
        view_a: SignalViewConfig | Mapping[str, Any] | None = None,
        view_b: SignalViewConfig | Mapping[str, Any] | None = None,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        **overrides: Any,
    ) -> None:
        if length is not None and (not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be a positive int (or None for the input length), got {length!r}")
        self.length = length
        self.view_a = _view_config(overrides, view_a)
        self.view_b = _view_config(overrides, view_b)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise ValueError(f"mean and std need the same number of values and std > 0, got {mean!r} and {std!r}")

    def standardize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel, as a new float tensor (float32 unless ``x`` is float64)."""
        if not isinstance(x, Tensor) or x.ndim != 3 or not x.is_floating_point():
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"SignalViews expects a float (N, C, T) batch, got {desc}; add a channel axis for one-channel "
                "signals (x[:, None, :]) and convert integers with x.float()"
            )
        c = x.shape[1]
        if len(self.mean) not in (1, c):
            raise ValueError(f"the signals have {c} channels but mean/std have {len(self.mean)} values")
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        m = torch.tensor(self.mean, dtype=dtype).expand(c).view(1, c, 1).to(x.device)
        s = torch.tensor(self.std, dtype=dtype).expand(c).view(1, c, 1).to(x.device)
        return (x.to(dtype) - m) / s

    def view(
        self, x: Tensor, cfg: SignalViewConfig, generator: torch.Generator | None = None, standardized: bool = False
    ) -> Tensor:
        """One view of ``x`` with configuration ``cfg`` (``standardized``: ``x`` already is)."""
        x = x if standardized else self.standardize(x)
        n, c, t = x.shape
        out_length = self.length or t
        device = generator.device if generator is not None else x.device
        params = sample_signal_params(cfg, n, c, t, out_length, generator, device)
        return apply_signal_view(x, params, out_length)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The two views ``(v_a, v_b)`` of a batch; ``generator`` makes them reproducible."""
        x = self.standardize(x)
        return self.view(x, self.view_a, generator, True), self.view(x, self.view_b, generator, True)

    def __repr__(self) -> str:
        return (
            f"SignalViews(length={self.length}, mean={self.mean}, std={self.std},\n  view_a={self.view_a},\n"
            f"  view_b={self.view_b})"
        )


# ------------------------------------------------------------------------------------------------ run config


@dataclass(frozen=True)
class SignalViewsConfig:
    """The signal views of a training run (``signal_views`` in the run config); both views alike."""

    length: int = 0
    """Output length of the random crop and resize, in steps (0: the input length)."""
    crop_scale_min: float = 0.5
    """Shortest crop as a fraction of the signal (1: no crop)."""
    scale_std: float = 0.1
    """Standard deviation of the per-channel amplitude factor around 1."""
    warp_std: float = 0.2
    """Standard deviation of the magnitude-warp knots around 1."""
    jitter_std: float = 0.1
    """Standard deviation of the additive noise (standardised units)."""
    mask_p: float = 0.5
    """Probability of masking one time window."""
    mask_size_min: float = 0.05
    """Shortest masked window as a fraction of the length."""
    mask_size_max: float = 0.2
    """Longest masked window as a fraction of the length."""
    channel_drop_p: float = 0.0
    """Probability of zeroing each channel."""

    def __post_init__(self) -> None:
        if self.length < 0:
            raise ValueError(f"signal_views.length must be >= 0, got {self.length}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"signal_views.crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if not 0 < self.mask_size_min <= self.mask_size_max <= 1:
            raise ValueError(
                "signal_views.mask_size_min and mask_size_max must satisfy 0 < mask_size_min <= mask_size_max <= 1, "
                f"got {self.mask_size_min} and {self.mask_size_max}"
            )
        for name in ("mask_p", "channel_drop_p"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"signal_views.{name} is a probability and must be in [0, 1], got {p}")
        try:
            self.view_config()
        except ValueError as err:
            raise ValueError(f"signal_views: {err}") from err

    def view_config(self) -> SignalViewConfig:
        """The :class:`SignalViewConfig` of these settings."""
        return SignalViewConfig(
            crop_scale=(self.crop_scale_min, 1.0),
            scale_std=self.scale_std,
            warp_std=self.warp_std,
            jitter_std=self.jitter_std,
            mask_p=self.mask_p,
            mask_size=(self.mask_size_min, self.mask_size_max),
            channel_drop_p=self.channel_drop_p,
        )


def signal_views(cfg: SignalViewsConfig, mean: Sequence[float], std: Sequence[float]) -> SignalViews:
    """The :class:`SignalViews` of a run's settings, standardising with the training data's statistics."""
    v = cfg.view_config()
    return SignalViews(cfg.length or None, view_a=v, view_b=v, mean=mean, std=std)
