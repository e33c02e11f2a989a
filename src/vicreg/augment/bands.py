"""Two views of multi-band and high-bit-depth images (``C >= 1`` bands, 8/12/16-bit or float), batched.

:class:`BandViews` takes the **raw** batch as it comes from the loader, ``(N, C, H, W)`` in ``uint8``,
``uint16``, ``int16`` or ``float32`` on any device, with the data's per-band statistics
(:class:`vicreg.data.bands.BandStats`), and returns two float32 views normalised like
:func:`vicreg.data.bands.normalize_bands` (``(value - mean) / std`` per band), which is what the encoder sees
at evaluation too. The batch is converted to float32 once, on its device (every 16-bit value exactly).

Working range. The photometric operations act on each band's values mapped to its ``[low, high]`` percentile
range, ``u = (value - low) / (high - low)``, without clipping: most pixels fall in ``[0, 1]`` and the few
brighter or darker ones (clouds, saturated cells, bone) keep their excess, so a brightness factor moves a
16-bit band the way it moves an 8-bit one. Only the RGB operations (colour jitter's saturation and hue,
greyscale, solarization) clip their three bands to ``[0, 1]``, as 8-bit colour operations clip to
``[0, 255]``.

Operations, in order, each sample drawing its own parameters (one ``generator`` makes both views
reproducible; no Python loop over samples):

1. random resized crop + horizontal flip (+ vertical flip and 90-degree rotations when enabled, for overhead
   and microscopy images), all folded into one ``grid_sample`` on every band;
2. brightness (a factor) then contrast (a blend with the image's mean), per band or one draw for all bands;
3. gamma ``u -> sign(u) |u| ** g`` (odd, monotonic: no NaN below ``low``), per band or shared;
4. the RGB operations on three chosen bands (``rgb_bands``; automatically ``(0, 1, 2)`` for 3-band
   ``uint8`` input): torchvision's saturation and hue jitter, greyscale, solarization, from
   :mod:`vicreg.augment.functional`;
5. Gaussian blur (every band of a sample with the same sigma);
6. Gaussian noise, its standard deviation a fraction of each band's ``[low, high]`` range;
7. normalisation to ``(value - mean) / std``;
8. band dropout: dropped bands of a sample are set to 0 (the band's mean), at least one band kept.

Noise is drawn on the batch's device from a seed drawn from ``generator``: the same generator state gives the
same views on one device, and the other parameters are drawn on the generator's device (the same on CPU and
GPU), but CPU and CUDA noise differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vicreg.augment import functional as AF
from vicreg.augment.images import OneViewConfig, default_blur_kernel_size, sample_view_params
from vicreg.data.bands import BandStats, to_unit

__all__ = [
    "GREYSCALE16_VIEW_A",
    "GREYSCALE16_VIEW_B",
    "MULTISPECTRAL_VIEW_A",
    "MULTISPECTRAL_VIEW_B",
    "RECIPES",
    "BandViewConfig",
    "BandViewParams",
    "BandViews",
    "BandViewsConfig",
    "apply_band_view",
    "auto_recipe",
    "band_views",
    "sample_band_view_params",
]


def _pair(name: str, value: Sequence[float], *, positive: bool = True) -> tuple[float, float]:
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"BandViewConfig.{name} must be a (min, max) pair, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and (lo > 0 or not positive)):
        raise ValueError(f"BandViewConfig.{name} must satisfy {'0 < ' if positive else ''}min <= max, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class BandViewConfig:
    """The random augmentation of one view of C-band images; every operation is off at its neutral value.

    Geometric (any number of bands):

    Attributes:
        crop_scale: range of the crop's area as a fraction of the image.
        crop_ratio: range of the crop's width / height (log-uniform).
        flip_p: probability of a horizontal flip.
        vflip_p: probability of a vertical flip (overhead imagery, microscopy).
        rotate90: rotate by 0, 90, 180 or 270 degrees, uniformly (needs a square output size).

    Photometric, on each band's ``[low, high]`` range (see the module doc):

    Attributes:
        jitter_p: probability of brightness + contrast jitter.
        brightness: factor uniform in ``[max(0, 1 - b), 1 + b]``; contrast: blend factor with the image's mean
            in ``[max(0, 1 - c), 1 + c]``.
        gamma_p: probability of a gamma change; gamma: its range, sampled log-uniformly (``(1, 1)`` = off).
        per_channel: draw brightness, contrast and gamma for each band independently (True) or once per
            sample for all bands (False: keeps the ratios between bands).
        blur_p, blur_sigma: Gaussian blur probability and sigma range (pixels).
        noise_p, noise_std: probability of additive Gaussian noise and the largest standard deviation, as a
            fraction of the band's ``[low, high]`` range (each sample draws its own in ``[0, noise_std]``).
        dropout_p, dropout_rate: probability that a sample drops bands, and each band's chance to be dropped
            then (at least one band is kept).

    RGB (only on three chosen bands, or 3-band 8-bit data):

    Attributes:
        saturation, hue: torchvision ``ColorJitter`` strengths, applied with ``jitter_p``.
        grayscale_p: probability of replacing the three bands by their luma.
        solarize_p: probability of solarization (values ``>= 0.5`` of the range become ``1 - u``).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    vflip_p: float = 0.0
    rotate90: bool = False
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gamma_p: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    per_channel: bool = True
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_p: float = 0.0
    noise_std: float = 0.0
    dropout_p: float = 0.0
    dropout_rate: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0
    solarize_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "gamma", "blur_sigma"):
            object.__setattr__(self, name, _pair(name, getattr(self, name)))
        if self.crop_scale[1] > 1:
            raise ValueError(f"BandViewConfig.crop_scale max must be <= 1 (the whole image), got {self.crop_scale}")
        for name in ("flip_p", "vflip_p", "jitter_p", "gamma_p", "blur_p", "noise_p", "dropout_p", "dropout_rate",
                     "grayscale_p", "solarize_p"):  # fmt: skip
            p = float(getattr(self, name))
            if not 0 <= p <= 1:
                raise ValueError(f"BandViewConfig.{name} is a probability and must be in [0, 1], got {p}")
            object.__setattr__(self, name, p)
        for name in ("brightness", "contrast", "noise_std", "saturation", "hue"):
            s = float(getattr(self, name))
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(f"BandViewConfig.{name} must be a finite strength >= 0, got {s}")
            object.__setattr__(self, name, s)
        if self.hue > 0.5:
            raise ValueError(f"BandViewConfig.hue must be <= 0.5 (half a turn), got {self.hue}")
        if not isinstance(self.rotate90, bool) or not isinstance(self.per_channel, bool):
            raise ValueError("BandViewConfig.rotate90 and per_channel must be True or False")

    @property
    def uses_rgb(self) -> bool:
        """Whether any RGB operation is on (they need three RGB bands)."""
        jitter = self.jitter_p > 0 and (self.saturation > 0 or self.hue > 0)
        return jitter or self.grayscale_p > 0 or self.solarize_p > 0


# ------------------------------------------------------------------------------------------------- recipes

MULTISPECTRAL_VIEW_A = BandViewConfig(
    crop_scale=(0.2, 1.0),
    vflip_p=0.5,
    rotate90=True,
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    per_channel=False,
    blur_p=1.0,
    noise_p=0.2,
    noise_std=0.02,
    dropout_p=0.2,
    dropout_rate=0.15,
)
"""Multispectral (satellite) view A. Why each choice:

* crops of at least 20% of the tile: a 64 px Sentinel-2 patch at 10 m cropped to 8% keeps 18 px (180 m), too
  little land cover to say what the scene is; fields, roads and towns need context;
* vertical flips and 90-degree rotations: an image taken from above has no "up", so every orientation is the
  same scene (the opposite of photographs, where rotations teach the wrong invariance);
* brightness/contrast jitter drawn once for all bands (``per_channel=False``): sun angle, haze and season
  scale the bands together, whereas an independent factor per band would change the spectrum (the band
  ratios behind NDVI, water and snow indices) that tells crops, water and soil apart;
* no gamma: calibrated reflectances are linear in the light; no RGB operations unless three bands are
  chosen as RGB (``rgb_bands``), since hue and solarization have no meaning for 13 bands;
* the paper's blur asymmetry (always on A, 10% on B) for the texture invariance it brings;
* a little noise (2% of the range, on 20% of samples): sensor noise of dark, low-reflectance bands;
* band dropout (20% of samples lose about 15% of their bands, never all): clouds, missing or saturated
  bands, and it keeps the encoder from resting on one band alone.
"""
MULTISPECTRAL_VIEW_B = replace(MULTISPECTRAL_VIEW_A, blur_p=0.1)
"""Multispectral view B: as A, blurred on 10% of samples only (the paper's asymmetry)."""

GREYSCALE16_VIEW_A = BandViewConfig(
    crop_scale=(0.2, 1.0),
    flip_p=0.5,
    jitter_p=0.8,
    brightness=0.3,
    contrast=0.3,
    gamma_p=0.5,
    gamma=(0.7, 1.5),
    per_channel=True,
    blur_p=1.0,
    blur_sigma=(0.1, 1.5),
    noise_p=0.5,
    noise_std=0.05,
)
"""16-bit greyscale (microscopy, medical) view A. Why each choice:

* crops of at least 20%: cells, nuclei and lesions are small parts of the field, but an 8% crop of a scan is
  mostly background;
* horizontal flips only, no rotations by default: X-rays, CT slices and MR images have an anatomical
  orientation (head up, patient's left on the right of the image), so rotations would teach a false
  invariance; microscopy has no orientation: set ``rotations=True`` in :class:`BandViewsConfig` (it turns on
  vertical flips and 90-degree rotations);
* brightness, contrast and gamma jitter: exposure, staining and detector gain, and the display window chosen
  by the reader, change intensities non-linearly; on 16-bit data they act within the 1st-99th percentile range
  and nothing is clipped, so saturated highlights keep their excess;
* drawn per channel (``per_channel=True``): the channels of fluorescence microscopy are independent stains,
  each with its own exposure and bleaching (one channel: no difference);
* Gaussian noise (up to 5% of the range, half the samples): photon shot noise and read noise of cameras,
  quantum noise of X-ray and CT; blur up to sigma 1.5 (focus, partial-volume), always on A, 10% on B;
* no colour operations (one channel, or channels that are not colours) and no band dropout (with one channel
  there is nothing to drop; for a few stains each carries its own structure).
"""
GREYSCALE16_VIEW_B = replace(GREYSCALE16_VIEW_A, blur_p=0.1)
"""16-bit greyscale view B: as A, blurred on 10% of samples only (the paper's asymmetry)."""

RECIPES: dict[str, tuple[BandViewConfig, BandViewConfig]] = {
    "multispectral": (MULTISPECTRAL_VIEW_A, MULTISPECTRAL_VIEW_B),
    "greyscale16": (GREYSCALE16_VIEW_A, GREYSCALE16_VIEW_B),
}
"""The two recipes by name: their (view A, view B) configurations; see each constant for the reasoning."""

_RGB_ON = {"saturation": 0.2, "hue": 0.1, "grayscale_p": 0.2}  # the paper's strengths, for chosen RGB bands


# ------------------------------------------------------------------------------------------------- parameters


class BandViewParams(NamedTuple):
    """The random parameters of one view, one row per sample (``C``: the number of bands)."""

    boxes: Tensor  # (N, 4) int64 (top, left, height, width)
    flip: Tensor  # (N,) bool, horizontal, after the rotation
    vflip: Tensor  # (N,) bool, after the rotation
    rot: Tensor  # (N,) int64 in 0..3: counter-clockwise quarter turns, as torch.rot90(x, k, (2, 3))
    jitter: Tensor  # (N,) bool
    brightness: Tensor  # (N, C) factor
    contrast: Tensor  # (N, C) factor
    gamma: Tensor  # (N, C) exponent (1 where not applied)
    saturation: Tensor  # (N,) factor (RGB bands)
    hue: Tensor  # (N,) shift in turns (RGB bands)
    order: Tensor  # (N, 3) colour-jitter order (RGB bands)
    hue_position: Tensor  # (N,)
    grayscale: Tensor  # (N,) bool (RGB bands)
    blur: Tensor  # (N,) bool
    sigma: Tensor  # (N,)
    noise: Tensor  # (N,) standard deviation in units of the band range (0 where not applied)
    keep: Tensor  # (N, C) bool: bands kept by the dropout
    solarize: Tensor  # (N,) bool (RGB bands)
    noise_seed: int


def sample_band_view_params(
    cfg: BandViewConfig,
    n: int,
    channels: int,
    image_size: tuple[int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> BandViewParams:
    """Draw one view's parameters for ``n`` samples of ``channels`` bands, on ``device`` (default: the
    generator's device, else CPU). The crop, flip, blur and RGB parameters are drawn as
    :func:`vicreg.augment.images.sample_view_params` draws them."""
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    shared = sample_view_params(
        OneViewConfig(
            crop_scale=cfg.crop_scale,
            crop_ratio=cfg.crop_ratio,
            flip_p=cfg.flip_p,
            jitter_p=cfg.jitter_p,
            brightness=0.0,
            contrast=0.0,
            saturation=cfg.saturation,
            hue=cfg.hue,
            grayscale_p=cfg.grayscale_p,
            blur_p=cfg.blur_p,
            blur_sigma=cfg.blur_sigma,
            solarize_p=cfg.solarize_p,
        ),
        n,
        image_size,
        generator,
        device,
    )

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    def factors(strength: float) -> Tensor:
        lo, hi = max(0.0, 1 - strength), 1 + strength
        draw = rand(n, channels if cfg.per_channel else 1) * (hi - lo) + lo
        return draw.expand(n, channels).contiguous()

    vflip = rand(n) < cfg.vflip_p
    rot = (
        torch.randint(0, 4, (n,), generator=generator, device=device)
        if cfg.rotate90
        else torch.zeros(n, dtype=torch.int64, device=device)
    )
    brightness, contrast = factors(cfg.brightness), factors(cfg.contrast)
    log_lo, log_hi = math.log(cfg.gamma[0]), math.log(cfg.gamma[1])
    gamma = torch.exp(rand(n, channels if cfg.per_channel else 1) * (log_hi - log_lo) + log_lo).expand(n, channels)
    gamma = torch.where((rand(n) < cfg.gamma_p)[:, None], gamma, torch.ones_like(gamma))
    noise = torch.where(rand(n) < cfg.noise_p, rand(n) * cfg.noise_std, torch.zeros(n, device=device))
    keep = rand(n, channels) >= cfg.dropout_rate
    keep |= ~(rand(n) < cfg.dropout_p)[:, None]
    rescue = torch.nn.functional.one_hot(rand(n, channels).argmax(1), channels).bool()  # a random band
    keep |= rescue & ~keep.any(1, keepdim=True)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    return BandViewParams(
        shared.boxes, shared.flip, vflip, rot, shared.jitter, brightness, contrast, gamma, shared.saturation,
        shared.hue, shared.order, shared.hue_position, shared.grayscale, shared.blur, shared.sigma, noise, keep,
        shared.solarize, seed,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------- apply


def _crop_dihedral(
    x: Tensor, p: BandViewParams, size: tuple[int, int], scratch: AF.Scratch, any_transpose: bool
) -> Tensor:
    """Resized crop, then rotation by ``rot`` quarter turns and the flips, as one ``grid_sample``.

    The output pixel ``(i, j)`` samples the crop at ``(row, col)`` = ``(i, j)``, transposed to ``(j, i)``
    for odd turns, with either axis reversed: rotations and flips only permute the sampling grid.
    """
    in_h, in_w = x.shape[-2:]
    out_h, out_w = size
    top, left, height, width = p.boxes.unbind(1)
    ys = AF._axis_coords(top, height, out_h, in_h, clamp=True)  # (N, out_h)
    xs = AF._axis_coords(left, width, out_w, in_w, clamp=True)  # (N, out_w)
    transpose = p.rot % 2 == 1
    # torch.rot90 k: 1 -> out[i, j] = in[j, W-1-i]; 2 -> in[H-1-i, W-1-j]; 3 -> in[W-1-j, i]
    rev_x = (p.rot == 1) | (p.rot == 2)
    rev_y = (p.rot == 2) | (p.rot == 3)
    # A flip of the output reverses whichever crop axis feeds that output axis.
    rev_x = rev_x ^ torch.where(transpose, p.vflip, p.flip)
    rev_y = rev_y ^ torch.where(transpose, p.flip, p.vflip)
    xs = torch.where(rev_x[:, None], xs.flip(1), xs)
    ys = torch.where(rev_y[:, None], ys.flip(1), ys)
    grid = scratch.get("grid", (x.shape[0], out_h, out_w, 2), x)
    t = transpose[:, None, None]
    if any_transpose:  # square output only (checked by BandViews)
        grid[..., 0] = torch.where(t, xs[:, :, None], xs[:, None, :])
        grid[..., 1] = torch.where(t, ys[:, None, :], ys[:, :, None])
    else:
        grid[..., 0] = xs[:, None, :]
        grid[..., 1] = ys[:, :, None]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_band_view(
    u: Tensor,
    params: BandViewParams,
    size: tuple[int, int],
    *,
    scale: Tensor,
    shift: Tensor,
    blur_kernel_size: int,
    rgb_bands: Sequence[int] | None = None,
    scratch: AF.Scratch | None = None,
) -> Tensor:
    """One view of ``u`` (float ``(N, C, H, W)`` on each band's ``[low, high]`` range, see the module doc).

    Returns ``u * scale + shift`` per band after the operations (``scale``/``shift`` ``(C,)``: the map to the
    normalised values), with dropped bands at 0. A new tensor.
    """
    scratch = AF.Scratch() if scratch is None else scratch
    dev = u.device
    # Which optional steps run, read on the parameters' device (CPU for a CPU generator): no GPU sync.
    any_transpose = bool((params.rot % 2 == 1).any())
    any_gamma, any_noise = bool((params.gamma != 1).any()), bool((params.noise > 0).any())
    moved = [t.to(dev, non_blocking=dev.type != "cpu") for t in params[:-1]]
    p = BandViewParams._make([*moved, params.noise_seed])
    v = _crop_dihedral(u, p, size, scratch, any_transpose)
    n, c = v.shape[:2]
    on = p.jitter[:, None]
    b = torch.where(on, p.brightness, torch.ones_like(p.brightness)).view(n, c, 1, 1)
    k = torch.where(on, p.contrast, torch.ones_like(p.contrast)).view(n, c, 1, 1)
    v.mul_(b)
    mean = v.mean(dim=(2, 3), keepdim=True)
    v.sub_(mean).mul_(k).add_(mean)
    if any_gamma:
        sign = torch.sign(v)
        v.abs_().pow_(p.gamma.view(n, c, 1, 1)).mul_(sign)
    if rgb_bands is not None:
        idx = list(rgb_bands)
        rgb = v[:, idx].clamp_(0, 1)
        ones = torch.ones(n, device=dev)
        rgb = AF._color_jitter_(rgb, p.jitter, ones, ones, p.saturation, p.hue, p.order, p.hue_position, scratch)
        rgb = AF._grayscale_(rgb, p.grayscale, scratch)
        rgb = AF._solarize_(rgb, p.solarize, 0.5, scratch)
        v[:, idx] = rgb
    v = AF._gaussian_blur_(v, p.sigma, p.blur, blur_kernel_size, scratch)
    if any_noise:
        g = torch.Generator(device=dev).manual_seed(p.noise_seed)
        v.addcmul_(torch.randn(v.shape, generator=g, device=dev, dtype=v.dtype), p.noise.view(n, 1, 1, 1))
    v.mul_(scale.view(1, c, 1, 1)).add_(shift.view(1, c, 1, 1))
    return v.mul_(p.keep.view(n, c, 1, 1).to(v.dtype))


# ------------------------------------------------------------------------------------------------- views


class BandViews:
    """The two views of VICReg for C-band images of any bit depth; see the module doc for the operations.

    ``views = BandViews(64, stats=data.stats(), view_a=..., view_b=...); v_a, v_b = views(x, generator)``
    with ``x`` the raw ``(N, C, H, W)`` batch (``uint8``/``uint16``/``int16``/``float32``) on any device:
    two float32 batches ``(N, C, 64, 64)`` normalised with ``stats.mean``/``stats.std``.

    Args:
        size: output size, ``int`` or ``(height, width)`` (square when a view rotates).
        stats: the training data's :class:`~vicreg.data.bands.BandStats` (``C`` values each).
        view_a, view_b: the two views' :class:`BandViewConfig` (default: the multispectral recipe).
        rgb_bands: three band indices in R, G, B order on which the RGB operations act (Sentinel-2's B4/B3/B2:
            ``(3, 2, 1)``); ``None``: the three bands of 3-band ``uint8`` input, and RGB operations on any
            other input are refused.
        blur_kernel_size: odd number of blur taps; default about a tenth of the output, at least 3.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        stats: BandStats,
        view_a: BandViewConfig = MULTISPECTRAL_VIEW_A,
        view_b: BandViewConfig = MULTISPECTRAL_VIEW_B,
        rgb_bands: Sequence[int] | None = None,
        blur_kernel_size: int | None = None,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        self.view_a, self.view_b = view_a, view_b
        if (view_a.rotate90 or view_b.rotate90) and self.size[0] != self.size[1]:
            raise ValueError(f"90-degree rotations need a square output size, got {self.size}")
        c = len(stats.mean)
        if c < 1 or any(len(t) != c for t in stats) or min(stats.std) <= 0:
            raise ValueError(f"stats need one value per band in each of mean, std, low, high and std > 0, got {stats}")
        self.stats, self.channels = stats, c
        if rgb_bands is not None:
            rgb_bands = tuple(rgb_bands)
            if len(rgb_bands) != 3 or any(not 0 <= b < c for b in rgb_bands):
                raise ValueError(f"rgb_bands must be 3 band indices in [0, {c}) (R, G, B), got {rgb_bands!r}")
        elif (view_a.uses_rgb or view_b.uses_rgb) and c != 3:
            raise ValueError(
                f"the views' RGB operations (saturation, hue, greyscale, solarization) need three RGB bands, but the "
                f"data has {c}; name them with rgb_bands (e.g. (3, 2, 1) for Sentinel-2's B4/B3/B2) or turn them off"
            )
        self.rgb_bands = rgb_bands
        k = default_blur_kernel_size(min(self.size)) if blur_kernel_size is None else int(blur_kernel_size)
        if k < 1 or k % 2 == 0 or k // 2 >= min(self.size):
            raise ValueError(f"blur_kernel_size must be odd, >= 1 and less than twice the smaller side, got {k}")
        self.blur_kernel_size = k
        mean, std, low, high = (torch.tensor(t, dtype=torch.float64) for t in stats)
        span = torch.where(high > low, high - low, torch.ones_like(high))
        self._low, self._span = low.float(), span.float()
        self._scale, self._shift = (span / std).float(), ((low - mean) / std).float()
        self._scratch = AF.Scratch()

    def _unit(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"BandViews expects a (N, {self.channels}, H, W) batch, got {shape}")
        if x.dtype not in (torch.uint8, torch.uint16, torch.int16, torch.float32, torch.float64):
            raise ValueError(f"BandViews expects uint8, uint16, int16 or float32 values, got {x.dtype}")
        dev = x.device
        # Out of place: to_unit returns a float32 batch itself, which must stay as the caller gave it.
        return (to_unit(x) - self._low.to(dev).view(1, -1, 1, 1)).div_(self._span.to(dev).view(1, -1, 1, 1))

    def _rgb(self, x: Tensor, cfg: BandViewConfig) -> tuple[int, ...] | None:
        if not cfg.uses_rgb:
            return None
        if self.rgb_bands is not None:
            return tuple(self.rgb_bands)
        if x.dtype != torch.uint8:
            raise ValueError(
                f"the RGB operations apply to 8-bit RGB images; this batch is {x.dtype}: name three bands with "
                "rgb_bands to apply them to those, or turn them off"
            )
        return (0, 1, 2)

    def view(self, x: Tensor, cfg: BandViewConfig, generator: torch.Generator | None = None) -> Tensor:
        """One normalised view of the raw batch ``x`` with configuration ``cfg``."""
        return self._view(self._unit(x), cfg, self._rgb(x, cfg), generator)

    def _view(
        self, u: Tensor, cfg: BandViewConfig, rgb: tuple[int, ...] | None, generator: torch.Generator | None
    ) -> Tensor:
        device = generator.device if generator is not None else u.device
        params = sample_band_view_params(cfg, u.shape[0], self.channels, (u.shape[2], u.shape[3]), generator, device)
        dev = u.device
        return apply_band_view(
            u,
            params,
            self.size,
            scale=self._scale.to(dev),
            shift=self._shift.to(dev),
            blur_kernel_size=self.blur_kernel_size,
            rgb_bands=rgb,
            scratch=self._scratch if dev.type == "cpu" else AF.Scratch(),
        )

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The two views ``(v_a, v_b)`` of a raw batch; ``generator`` makes them reproducible."""
        u = self._unit(x)
        rgb_a, rgb_b = self._rgb(x, self.view_a), self._rgb(x, self.view_b)
        return self._view(u, self.view_a, rgb_a, generator), self._view(u, self.view_b, rgb_b, generator)

    def __repr__(self) -> str:
        return (
            f"BandViews(size={self.size}, channels={self.channels}, rgb_bands={self.rgb_bands}, "
            f"blur_kernel_size={self.blur_kernel_size},\n  view_a={self.view_a},\n  view_b={self.view_b})"
        )


# ------------------------------------------------------------------------------------------------- run config


@dataclass(frozen=True)
class BandViewsConfig:
    """The views of a multi-band / 16-bit training run; :func:`band_views` makes them."""

    recipe: Literal["auto", "multispectral", "greyscale16"] = "auto"
    """``multispectral`` (satellite: rotations, shared brightness/contrast, band dropout), ``greyscale16``
    (microscopy/medical: per-channel brightness/contrast/gamma, noise), see :data:`RECIPES`; ``auto``:
    greyscale16 for up to 4 bands, multispectral for more (:func:`auto_recipe`)."""
    size: int = 64
    """Output size of the random resized crop, in pixels."""
    crop_scale_min: float = 0.2
    """Smallest crop area as a fraction of the image."""
    rotations: bool | None = None
    """Vertical flips and 90-degree rotations (None: the recipe's choice, on for multispectral, off for
    greyscale16; turn them on for microscopy)."""
    rgb_bands: tuple[int, ...] = field(default_factory=tuple)
    """Three band indices (R, G, B) for the RGB operations (saturation 0.2, hue 0.1, greyscale 0.2, and
    solarization 0.2 on view B); empty: none. Sentinel-2 L1C/L2A with all 13 bands: 3 2 1."""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES and self.recipe != "auto":
            raise ValueError(f"views.recipe must be auto or one of {sorted(RECIPES)}, got {self.recipe!r}")
        if self.size < 8:
            raise ValueError(f"views.size must be at least 8 pixels, got {self.size}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"views.crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.rgb_bands and (len(self.rgb_bands) != 3 or min(self.rgb_bands) < 0):
            raise ValueError(f"views.rgb_bands must be three band indices (R G B), got {self.rgb_bands}")


def auto_recipe(channels: int) -> Literal["multispectral", "greyscale16"]:
    """The recipe ``recipe="auto"`` picks: ``greyscale16`` for 1 to 4 bands (a greyscale scan, a few
    microscopy stains), ``multispectral`` for 5 or more (satellite bands)."""
    return "greyscale16" if channels <= 4 else "multispectral"


def band_views(cfg: BandViewsConfig, stats: BandStats) -> BandViews:
    """The :class:`BandViews` of a run's settings for data with these per-band statistics."""
    recipe = auto_recipe(len(stats.mean)) if cfg.recipe == "auto" else cfg.recipe
    view_a, view_b = RECIPES[recipe]
    overrides: dict[str, object] = {"crop_scale": (cfg.crop_scale_min, 1.0)}
    if cfg.rotations is not None:
        overrides.update(rotate90=cfg.rotations, vflip_p=0.5 if cfg.rotations else 0.0)
    if cfg.rgb_bands:
        overrides.update(_RGB_ON)
    view_a = replace(view_a, **overrides)  # type: ignore[arg-type]
    view_b = replace(view_b, **overrides, **({"solarize_p": 0.2} if cfg.rgb_bands else {}))  # type: ignore[arg-type]
    return BandViews(cfg.size, stats=stats, view_a=view_a, view_b=view_b, rgb_bands=cfg.rgb_bands or None)
