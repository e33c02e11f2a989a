"""The paper's two augmented views of an image batch, batched on the batch's device.

:class:`ImageViews` turns a ``(N, C, H, W)`` batch into the two normalised views of VICReg (``PaperViews`` is
the same class under its first name, kept as public API). Its defaults are the official recipe
(facebookresearch/vicreg ``augmentations.py``, the paper's appendix); every probability and strength of one
view is a field of :class:`OneViewConfig` and can be overridden per view. Each sample draws its own
parameters (:func:`sample_view_params`), then :func:`apply_view` applies them with the batched operations of
:mod:`vicreg.augment.functional`. ``ImageViews(..., local_crops=M).multi(x)`` adds ``M`` small local crops per
image (multi-crop, as SwAV, DINO and VICRegL), all ``M * N`` of them drawn and applied as one batch
(:func:`apply_local_views`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vicreg.augment import functional as AF
from vicreg.deprecation import renamed

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAPER_VIEW_A",
    "PAPER_VIEW_B",
    "SYMMETRIC_VIEW",
    "ImageViews",
    "ImageViewsConfig",
    "OneViewConfig",
    "PaperViews",
    "ViewParams",
    "apply_local_views",
    "apply_view",
    "default_blur_kernel_size",
    "image_views",
    "sample_view_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OneViewConfig:
    """The random augmentation of one view. The defaults are the paper's view A.

    Attributes:
        crop_scale: range of the crop's area as a fraction of the image (RandomResizedCrop ``scale``).
        crop_ratio: range of the crop's width / height, sampled log-uniformly (``ratio``).
        flip_p: probability of a horizontal flip.
        jitter_p: probability of the colour jitter (all four operations, in a random order).
        brightness, contrast, saturation: the factor is uniform in ``[max(0, 1 - s), 1 + s]``; 0 disables.
        hue: the shift is uniform in ``[-hue, hue]`` turns; at most 0.5; 0 disables.
        grayscale_p: probability of converting to grayscale (kept on all channels).
        blur_p: probability of the Gaussian blur; blur_sigma: its sigma range, sampled uniformly.
        solarize_p: probability of solarization (pixels >= 0.5 become ``1 - x``).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            value = getattr(self, name)
            if not isinstance(value, Sequence) or len(value) != 2:
                raise ValueError(f"OneViewConfig.{name} must be a (min, max) pair, got {value!r}")
            lo, hi = float(value[0]), float(value[1])
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(f"OneViewConfig.{name} must satisfy 0 < min <= max, got {value!r}")
            object.__setattr__(self, name, (lo, hi))
        if self.crop_scale[1] > 1:
            raise ValueError(f"OneViewConfig.crop_scale max must be <= 1 (the whole image), got {self.crop_scale}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = float(getattr(self, name))
            if not 0 <= p <= 1:
                raise ValueError(f"OneViewConfig.{name} is a probability and must be in [0, 1], got {p}")
            object.__setattr__(self, name, p)
        for name in ("brightness", "contrast", "saturation", "hue"):
            s = float(getattr(self, name))
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(f"OneViewConfig.{name} must be a finite strength >= 0, got {s}")
            object.__setattr__(self, name, s)
        if self.hue > 0.5:
            raise ValueError(f"OneViewConfig.hue must be <= 0.5 (half a turn of the colour wheel), got {self.hue}")


PAPER_VIEW_A = OneViewConfig(blur_p=1.0, solarize_p=0.0)
"""The official ``TrainTransform.transform``: always blurred, never solarized."""
PAPER_VIEW_B = OneViewConfig(blur_p=0.1, solarize_p=0.2)
"""The official ``TrainTransform.transform_prime``: blurred with p = 0.1, solarized with p = 0.2."""
SYMMETRIC_VIEW = OneViewConfig(blur_p=0.5, solarize_p=0.1)
"""One pipeline for both views, as lightly's ``VICRegTransform`` (blur 0.5, solarize 0.1) does."""


class ViewParams(NamedTuple):
    """The random parameters of one view, one row per sample (all on the same device)."""

    boxes: Tensor  # (N, 4) int64 (top, left, height, width)
    flip: Tensor  # (N,) bool
    jitter: Tensor  # (N,) bool
    brightness: Tensor  # (N,) factor
    contrast: Tensor  # (N,) factor
    saturation: Tensor  # (N,) factor
    hue: Tensor  # (N,) shift in turns
    order: Tensor  # (N, 3) permutation of brightness, contrast, saturation
    hue_position: Tensor  # (N,) int64 in 0..3
    grayscale: Tensor  # (N,) bool
    blur: Tensor  # (N,) bool
    sigma: Tensor  # (N,)
    solarize: Tensor  # (N,) bool


def default_blur_kernel_size(size: int) -> int:
    """About a tenth of the image, odd, at least 3 (23 at 224 px, 9 at 96 px, 3 at 32 px)."""
    k = int(0.1 * size)
    return max(3, k if k % 2 == 1 else k + 1)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def _sample_boxes(
    cfg: OneViewConfig,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    device: torch.device,
    attempts: int = 10,
) -> Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for ``n`` samples at once.

    Ten (area, log-ratio) draws per sample; the first whose rounded box fits is kept, otherwise the central
    crop with the ratio clamped to the range. The offset is uniform over the valid positions.
    """
    area = height * width
    scale = torch.rand(n, attempts, generator=generator, device=device)
    scale = scale * (cfg.crop_scale[1] - cfg.crop_scale[0]) + cfg.crop_scale[0]
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(torch.rand(n, attempts, generator=generator, device=device) * (log_hi - log_lo) + log_lo)
    target = area * scale.double()
    w = torch.round(torch.sqrt(target * ratio.double())).long()
    h = torch.round(torch.sqrt(target / ratio.double())).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < cfg.crop_ratio[0]:
        fb_w, fb_h = width, round(width / cfg.crop_ratio[0])
    elif in_ratio > cfg.crop_ratio[1]:
        fb_w, fb_h = round(height * cfg.crop_ratio[1]), height
    else:
        fb_w, fb_h = width, height
    found = fits.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fb_w))
    h = torch.where(found, h, torch.full_like(h, fb_h))

    u = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(found, (u[:, 1] * (width - w + 1)).long(), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def sample_view_params(
    cfg: OneViewConfig,
    n: int,
    image_size: tuple[int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> ViewParams:
    """Draw one view's parameters for ``n`` samples of an ``image_size = (H, W)`` batch.

    The draws happen on ``device`` (default: the generator's device, else CPU), so one seeded generator gives
    the same parameters whatever device the images are on.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)

    def unif(lo: float, hi: float) -> Tensor:
        return _uniform(n, lo, hi, generator, device)

    def coin(p: float) -> Tensor:
        return _bernoulli(n, p, generator, device)

    boxes = _sample_boxes(cfg, n, image_size[0], image_size[1], generator, device)
    flip = coin(cfg.flip_p)
    jitter = coin(cfg.jitter_p)
    brightness = unif(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
    contrast = unif(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
    saturation = unif(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
    hue = unif(-cfg.hue, cfg.hue)
    order = torch.rand(n, 3, generator=generator, device=device).argsort(dim=1)
    hue_position = torch.randint(0, 4, (n,), generator=generator, device=device)
    grayscale = coin(cfg.grayscale_p)
    blur = coin(cfg.blur_p)
    sigma = unif(*cfg.blur_sigma)
    solarize = coin(cfg.solarize_p)
    return ViewParams(
        boxes, flip, jitter, brightness, contrast, saturation, hue, order, hue_position, grayscale, blur,
        sigma, solarize,
    )  # fmt: skip


def apply_view(
    x: Tensor,
    params: ViewParams,
    size: tuple[int, int],
    *,
    blur_kernel_size: int,
    interpolation: str = "bilinear",
    scratch: AF.Scratch | None = None,
) -> Tensor:
    """Apply one view to a float batch in ``[0, 1]``, in the official order; returns values in ``[0, 1]``.

    Resized crop and flip, colour jitter, grayscale, blur, solarize (normalisation is left to the caller).
    The result is a new tensor; ``scratch`` holds the temporaries (a fresh one when None).
    """
    scratch = AF.Scratch() if scratch is None else scratch
    # D2H copies stay blocking: a non-blocking copy into pageable CPU memory may be read before it lands.
    p = ViewParams(*(t.to(x.device, non_blocking=x.device.type != "cpu") for t in params))
    x = AF.resized_crop(x, p.boxes, size, p.flip, interpolation, scratch)
    # The crop is a fresh tensor that this function owns, so the steps below work on it in place.
    x = AF._color_jitter_(x, p.jitter, p.brightness, p.contrast, p.saturation, p.hue, p.order, p.hue_position, scratch)
    x = AF._grayscale_(x, p.grayscale, scratch)
    x = AF._gaussian_blur_(x, p.sigma, p.blur, blur_kernel_size, scratch)
    return AF._solarize_(x, p.solarize, 0.5, scratch)


def _local_crops(
    x: Tensor, boxes: Tensor, flip: Tensor, crops: int, size: tuple[int, int], interpolation: str, scratch: AF.Scratch
) -> Tensor:
    """The ``crops`` resized crops of every sample of ``x`` in one ``grid_sample``, without copying ``x``.

    ``boxes`` ``(crops * N, 4)`` and ``flip`` ``(crops * N,)`` are crop-major (row ``m * N + n`` is crop ``m`` of
    sample ``n``). The sampling grids of one sample's crops are stacked along the output height, so the
    input keeps its ``N`` rows; the result is reordered to ``(crops * N, C, h, w)``, crop-major. Each output
    pixel is sampled from its own grid point alone, so this equals :func:`vicreg.augment.functional.
    resized_crop` of ``x`` repeated ``crops`` times, value for value.
    """
    n, c, in_h, in_w = x.shape
    out_h, out_w = size
    bilinear = interpolation == "bilinear"
    top, left, height, width = boxes.unbind(1)
    ys = AF._axis_coords(top, height, out_h, in_h, clamp=bilinear)
    xs = AF._axis_coords(left, width, out_w, in_w, clamp=bilinear)
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    grid = scratch.get("grid", (n, crops, out_h, out_w, 2), x)
    grid[..., 0] = xs.view(crops, n, 1, out_w).transpose(0, 1)
    grid[..., 1] = ys.view(crops, n, out_h, 1).transpose(0, 1)
    grid = grid.view(n, crops * out_h, out_w, 2)
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    out = out.view(n, c, crops, out_h, out_w).permute(2, 0, 1, 3, 4).reshape(crops * n, c, out_h, out_w)
    return out if bilinear else out.clamp_(0, 1)


def apply_local_views(
    x: Tensor,
    params: ViewParams,
    crops: int,
    size: tuple[int, int],
    *,
    blur_kernel_size: int,
    interpolation: str = "bilinear",
    scratch: AF.Scratch | None = None,
) -> Tensor:
    """:func:`apply_view` for ``crops`` views of every sample at once: ``(crops * N, C, h, w)``, crop-major.

    ``params`` has ``crops * N`` rows, row ``m * N + n`` being crop ``m`` of sample ``n`` of ``x``
    (``(N, C, H, W)`` float in ``[0, 1]``). Equals ``apply_view(x.repeat(crops, 1, 1, 1), params, size, ...)``
    without materialising the repeated input.
    """
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    n = x.shape[0]
    if crops < 1 or params.boxes.shape[0] != crops * n:
        raise ValueError(
            f"apply_local_views needs crops >= 1 and crops * N = {crops} * {n} parameter rows, "
            f"got {params.boxes.shape[0]}"
        )
    scratch = AF.Scratch() if scratch is None else scratch
    p = ViewParams(*(t.to(x.device, non_blocking=x.device.type != "cpu") for t in params))
    v = _local_crops(x, p.boxes, p.flip, crops, size, interpolation, scratch)
    v = AF._color_jitter_(v, p.jitter, p.brightness, p.contrast, p.saturation, p.hue, p.order, p.hue_position, scratch)
    v = AF._grayscale_(v, p.grayscale, scratch)
    v = AF._gaussian_blur_(v, p.sigma, p.blur, blur_kernel_size, scratch)
    return AF._solarize_(v, p.solarize, 0.5, scratch)


def _view_config(
    base: OneViewConfig, shared: Mapping[str, Any], own: OneViewConfig | Mapping[str, Any] | None
) -> OneViewConfig:
    if isinstance(own, OneViewConfig):
        base, own = own, None
    names = {f.name for f in fields(OneViewConfig)}
    for overrides in (shared, own or {}):
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(
                f"unknown view option(s) {unknown}; the options are the OneViewConfig fields {sorted(names)}"
            )
        base = replace(base, **overrides)
    return base


class ImageViews:
    """The two augmented views of VICReg, for a whole batch at once, on the batch's device.

    ``views = ImageViews(size=32); v_a, v_b = views(x)`` with ``x`` a ``(N, C, H, W)`` uint8 batch (or float
    in ``[0, 1]``), ``C`` = 1 or 3, on any device: two float batches ``(N, C, size, size)``, normalised
    (float32; float64 input stays float64). Each sample draws its own parameters; pass ``generator=`` to the
    call for reproducible views: the parameters are drawn on the generator's device, so a CPU generator gives
    the same views on CPU and GPU up to float rounding.

    Defaults and the official code (facebookresearch/vicreg ``augmentations.py``), in order:

    ============================  ===========================================  ==========================
    operation                     view A / view B                              official
    ============================  ===========================================  ==========================
    RandomResizedCrop             scale (0.08, 1), ratio (3/4, 4/3)            same, PIL bicubic
    horizontal flip               p = 0.5                                      same
    ColorJitter, random order     p = 0.8; brightness 0.4, contrast 0.4,       same
                                  saturation 0.2, hue 0.1
    grayscale                     p = 0.2                                      same
    Gaussian blur                 sigma U(0.1, 2); p = 1.0 / 0.1               PIL GaussianBlur(sigma)
    solarization                  threshold 0.5; p = 0.0 / 0.2                 PIL solarize (>= 128)
    normalisation                 ImageNet mean / std                          same
    ============================  ===========================================  ==========================

    Where it differs, by necessity of working on float batches, and how to change it:

    * Resizing is bilinear without antialiasing, like torchvision's tensor ``antialias=False`` and kornia; the
      official code resizes PIL images bicubic, which antialiases when a crop is shrunk. ``interpolation=
      "bicubic"`` uses the bicubic kernel (still without antialiasing). When the input already has the
      output size (CIFAR at 32 px, STL-10 at 96 px) crops are only ever enlarged and antialiasing does not
      arise.
    * The blur kernel has ``blur_kernel_size`` taps (default about a tenth of the image, odd: 23 at 224 px,
      the size solo-learn uses; 3 at 32 px), where PIL's blur is not truncated. At 224 px 23 taps cover
      +-5.5 sigma of the largest sigma; at 32 px a 3-tap kernel blurs far less than sigma = 2 would.
    * The official ops round to uint8 after each step; ours stay float. Solarizing at 0.5 is what PIL's
      ``>= 128`` does to a float value that would be rounded to uint8 first.

    ``symmetric=True`` uses one pipeline for both views, as lightly and solo-learn do (blur p = 0.5, solarize
    p = 0.1 on both), for comparison; it is not the paper's recipe.

    Multi-crop (SwAV, DINO, the global loss of VICRegL): ``local_crops = M > 0`` adds ``M`` small crops per
    image, returned by :meth:`multi` next to the two global views (``views(x)`` still returns the pair). Each
    local crop has its own random parameters: by default view B's augmentations (after ``view_b`` and the
    shared overrides) with the crop scale ``local_crop_scale``; ``view_local`` overrides fields as ``view_b``
    does. VICRegL's own code alternates view A's and view B's colour pipelines over its local crops; pass
    ``view_local=PAPER_VIEW_A`` (or ``{"blur_p": 1.0, "solarize_p": 0.0}``) for A's. All ``M * N`` crops are
    drawn, resized and augmented as one batch; ``M = 0`` draws nothing more than the pair.

    One-channel input works: brightness and contrast act on the one channel (contrast blends with its mean),
    saturation, hue and grayscale are the identity, and the normalisation statistics are averaged to one value
    (ImageNet: mean 0.449, std 0.226) unless given with one value each.

    On CPU an instance keeps its temporary tensors between calls (fresh memory costs a page fault per 4 KiB
    there, which was about 40% of the time), so do not call one instance from two threads at once; DataLoader
    worker processes each get their own copy. On a GPU nothing is kept.

    Args:
        size: output size, ``int`` or ``(height, width)``.
        view_a, view_b: a :class:`OneViewConfig` to use instead of the paper's, or a mapping of fields to
            override on it for that view only, e.g. ``view_b={"solarize_p": 0.0}``.
        symmetric: both views start from :data:`SYMMETRIC_VIEW` instead of the paper's asymmetric pair.
        mean, std: normalisation statistics per channel (default ImageNet; pass your dataset's).
        normalize: False returns the views in ``[0, 1]``.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
        blur_kernel_size: odd number of blur taps; default :func:`default_blur_kernel_size` of the smaller
            side.
        local_crops: number ``M`` of local crops per image made by :meth:`multi` (0: the pair only).
        local_size: their output size, ``int`` or ``(height, width)``; default half of ``size`` per side,
            at least 8 (and at most ``size``).
        local_crop_scale: their crop area range as a fraction of the image (DINO's (0.05, 0.4)); it always
            replaces the ``crop_scale`` of the local crops' configuration.
        view_local: a :class:`OneViewConfig` or a mapping of fields overriding view B's configuration for the
            local crops (``crop_scale`` excepted: see ``local_crop_scale``).
        local_blur_kernel_size: blur taps of the local crops; default :func:`default_blur_kernel_size` of
            their smaller side.
        **overrides: :class:`OneViewConfig` fields applied to both views, e.g. ``hue=0.0``; ``view_a``/``view_b``
            mappings are applied after them.
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        *,
        view_a: OneViewConfig | Mapping[str, Any] | None = None,
        view_b: OneViewConfig | Mapping[str, Any] | None = None,
        symmetric: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalize: bool = True,
        interpolation: str = "bilinear",
        blur_kernel_size: int | None = None,
        local_crops: int = 0,
        local_size: int | tuple[int, int] | None = None,
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        view_local: OneViewConfig | Mapping[str, Any] | None = None,
        local_blur_kernel_size: int | None = None,
        **overrides: Any,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        self.view_a = _view_config(SYMMETRIC_VIEW if symmetric else PAPER_VIEW_A, overrides, view_a)
        self.view_b = _view_config(SYMMETRIC_VIEW if symmetric else PAPER_VIEW_B, overrides, view_b)
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self.interpolation = interpolation
        k = default_blur_kernel_size(min(self.size)) if blur_kernel_size is None else int(blur_kernel_size)
        if k < 1 or k % 2 == 0 or k // 2 >= min(self.size):
            raise ValueError(
                f"blur_kernel_size must be odd, >= 1 and less than twice the smaller output side "
                f"{min(self.size)}, got {k}"
            )
        self.blur_kernel_size = k
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3) or min(self.std) <= 0:
            raise ValueError(f"mean and std need 1 or 3 values each and std > 0, got mean={mean!r}, std={std!r}")
        self.normalize = normalize
        self._scratch = AF.Scratch()
        self._init_local(local_crops, local_size, local_crop_scale, view_local, local_blur_kernel_size)

    def _init_local(
        self,
        crops: int,
        size: int | tuple[int, int] | None,
        crop_scale: tuple[float, float],
        view: OneViewConfig | Mapping[str, Any] | None,
        blur_kernel_size: int | None,
    ) -> None:
        if isinstance(crops, bool) or not isinstance(crops, int) or crops < 0:
            raise ValueError(f"local_crops must be an int >= 0 (0: only the two global views), got {crops!r}")
        self.local_crops = crops
        if size is None:
            h, w = self.size
            self.local_size = (min(h, max(8, h // 2)), min(w, max(8, w // 2)))
        elif isinstance(size, int) and not isinstance(size, bool):
            self.local_size = (size, size)
        elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
            self.local_size = (int(size[0]), int(size[1]))
        else:
            raise ValueError(f"local_size must be an int or (height, width), got {size!r}")
        if min(self.local_size) < 1:
            raise ValueError(f"local_size must be positive, got {size!r}")
        if isinstance(view, Mapping) and "crop_scale" in view:
            raise ValueError("set the local crops' scale with local_crop_scale=(min, max), not in view_local")
        self.view_local = replace(_view_config(self.view_b, {}, view), crop_scale=crop_scale)
        k = default_blur_kernel_size(min(self.local_size)) if blur_kernel_size is None else int(blur_kernel_size)
        if k < 1 or k % 2 == 0 or k // 2 >= min(self.local_size):
            raise ValueError(
                f"local_blur_kernel_size must be odd, >= 1 and less than twice the smaller local side "
                f"{min(self.local_size)}, got {k}"
            )
        self.local_blur_kernel_size = k
        self._scratch_local = AF.Scratch()  # own buffers: the local shapes differ from the global ones

    def _to_float(self, x: Tensor, keep: bool = False) -> Tensor:
        """Check ``x`` and bring it to float in [0, 1] (``keep``: in this instance's CPU scratch memory)."""
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"ImageViews expects a (N, C, H, W) tensor with C = 1 or 3, got {shape}; "
                "stack the images into one batch and put channels first (e.g. x.permute(0, 3, 1, 2))"
            )
        if x.dtype == torch.uint8:
            keep = keep and x.device.type == "cpu"
            out = self._scratch.get("input", tuple(x.shape), x, torch.float32) if keep else None
            return torch.div(x, 255, out=out)
        if not x.is_floating_point():
            raise ValueError(f"ImageViews expects uint8 or float in [0, 1], got dtype {x.dtype}")
        # float16/bfloat16 are too coarse for the HSV and blend arithmetic: compute (and return) float32.
        return x if x.dtype in (torch.float32, torch.float64) else x.float()

    def _normalize(self, v: Tensor) -> Tensor:
        c = v.shape[1]
        mean, std = self.mean, self.std
        if c == 1 and len(mean) == 3:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        if c == 3 and len(mean) == 1:
            mean, std = mean * 3, std * 3
        m = torch.tensor(mean, dtype=v.dtype).view(1, c, 1, 1).to(v.device, non_blocking=True)
        s = torch.tensor(std, dtype=v.dtype).view(1, c, 1, 1).to(v.device, non_blocking=True)
        return v.sub_(m).div_(s)

    def view(self, x: Tensor, cfg: OneViewConfig, generator: torch.Generator | None = None) -> Tensor:
        """One view of ``x`` with configuration ``cfg`` (normalised unless ``normalize=False``)."""
        x = self._to_float(x)
        device = generator.device if generator is not None else x.device
        params = sample_view_params(cfg, x.shape[0], (x.shape[2], x.shape[3]), generator, device)
        # On CPU the temporaries are kept between calls (fresh memory costs page faults there); on a GPU the
        # caching allocator already reuses memory, and holding image-sized buffers would only pin it.
        scratch = self._scratch if x.device.type == "cpu" else AF.Scratch()
        v = apply_view(
            x,
            params,
            self.size,
            blur_kernel_size=self.blur_kernel_size,
            interpolation=self.interpolation,
            scratch=scratch,
        )
        return self._normalize(v) if self.normalize else v

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The two views ``(v_a, v_b)`` of a batch; ``generator`` makes them reproducible."""
        x = self._to_float(x, keep=True)
        return self.view(x, self.view_a, generator), self.view(x, self.view_b, generator)

    def local_views(self, x: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """The ``local_crops`` local views of ``x``: a list of ``M`` batches ``(N, C, *local_size)``.

        Crop ``m`` of every sample is in the ``m``-th batch. The ``M * N`` parameter rows are drawn at once
        (crop-major) from ``generator``, then cropped and augmented as one batch. Empty when ``M = 0``.
        """
        if self.local_crops == 0:
            return []
        x = self._to_float(x)
        m, n = self.local_crops, x.shape[0]
        device = generator.device if generator is not None else x.device
        params = sample_view_params(self.view_local, m * n, (x.shape[2], x.shape[3]), generator, device)
        scratch = self._scratch_local if x.device.type == "cpu" else AF.Scratch()
        v = apply_local_views(
            x,
            params,
            m,
            self.local_size,
            blur_kernel_size=self.local_blur_kernel_size,
            interpolation=self.interpolation,
            scratch=scratch,
        )
        v = self._normalize(v) if self.normalize else v
        return list(v.view(m, n, *v.shape[1:]).unbind(0))

    def multi(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """The global views ``[v_a, v_b]`` and the ``M`` local views (:meth:`local_views`) of a batch.

        The global views are drawn first, exactly as ``views(x, generator)`` draws them, so they are the
        same tensors (bit for bit) as the pair and ``M = 0`` gives ``([v_a, v_b], [])``.
        """
        x = self._to_float(x, keep=True)
        v_a, v_b = self.view(x, self.view_a, generator), self.view(x, self.view_b, generator)
        return [v_a, v_b], self.local_views(x, generator)

    def __repr__(self) -> str:
        return (
            f"ImageViews(size={self.size}, interpolation={self.interpolation!r}, "
            f"blur_kernel_size={self.blur_kernel_size}, normalize={self.normalize}, mean={self.mean}, "
            f"std={self.std},\n  view_a={self.view_a},\n  view_b={self.view_b}"
            + (
                f",\n  local_crops={self.local_crops}, local_size={self.local_size}, "
                f"local_blur_kernel_size={self.local_blur_kernel_size},\n  view_local={self.view_local}"
                if self.local_crops
                else ""
            )
            + ")"
        )


PaperViews = ImageViews
"""The paper's image pair under its first name: the same class as :class:`ImageViews`, kept (no warning) as the
public name ``from vicreg import PaperViews`` that the design promises."""

if TYPE_CHECKING:  # the single-view settings were called ViewConfig (one release)
    ViewConfig = OneViewConfig
else:
    __getattr__ = renamed(__name__, {"ViewConfig": OneViewConfig})


# ------------------------------------------------------------------------------------------------ run config


@dataclass(frozen=True)
class ImageViewsConfig:
    """The image views of a training run (``views`` in the run config); :func:`image_views` makes them."""

    size: int = 0
    """Output size of the random resized crop, in pixels (0: chosen from the data when training starts, the
    median shorter side of its images between 16 and 224; the run header says what was chosen)."""
    crop_scale_min: float = 0.08
    """Smallest crop area as a fraction of the image (the paper: 0.08)."""
    symmetric: bool = False
    """One shared pipeline for both views (lightly/solo-learn) instead of the paper's asymmetric pair."""
    normalize: Literal["dataset", "imagenet"] = "dataset"
    """Normalise with the dataset's channel statistics or ImageNet's."""
    blur_prob_a: float = 1.0
    """Gaussian blur probability of view A (paper: 1.0)."""
    blur_prob_b: float = 0.1
    """Gaussian blur probability of view B (paper: 0.1)."""
    solarize_prob_b: float = 0.2
    """Solarization probability of view B (paper: 0.2; view A: 0)."""
    jitter_strength: float = 1.0
    """Scale of the colour-jitter strengths (brightness .4, contrast .4, saturation .2, hue .1)."""
    symmetric_blur_prob: float = 0.5
    """Gaussian blur probability of both views when ``symmetric`` (lightly: 0.5; solo-learn CIFAR: 0)."""
    symmetric_solarize_prob: float = 0.1
    """Solarization probability of both views when ``symmetric`` (lightly and solo-learn: 0.1)."""

    local_crops: int = 0
    """Multi-crop: small extra crops per image (0: the paper's pair). They take view B's augmentations."""
    local_size: int = 0
    """Side of the local crops in pixels (0: half of size, at least 8)."""
    local_crop_scale_min: float = 0.05
    """Smallest local crop area as a fraction of the image."""
    local_crop_scale_max: float = 0.4
    """Largest local crop area as a fraction of the image."""

    def __post_init__(self) -> None:
        if self.size != 0 and self.size < 8:
            raise ValueError(f"views.size must be at least 8 pixels (or 0: from the data), got {self.size}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"views.crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        for name in ("blur_prob_a", "blur_prob_b", "solarize_prob_b", "symmetric_blur_prob", "symmetric_solarize_prob"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"views.{name} is a probability and must be in [0, 1], got {p}")
        _non_negative("views.jitter_strength", self.jitter_strength)
        if self.local_crops < 0 or self.local_size < 0:
            raise ValueError(
                f"views.local_crops and views.local_size must be >= 0, got {self.local_crops} and {self.local_size}"
            )
        if not 0 < self.local_crop_scale_min <= self.local_crop_scale_max <= 1:
            raise ValueError(
                "views.local_crop_scale_min and views.local_crop_scale_max must satisfy 0 < min <= max <= 1, got "
                f"{self.local_crop_scale_min} and {self.local_crop_scale_max}"
            )


def image_views(
    cfg: ImageViewsConfig, data_mean: Sequence[float], data_std: Sequence[float], channels: int
) -> ImageViews:
    """The :class:`ImageViews` of a run's view settings, for images of ``channels`` channels whose pixel
    statistics (in ``[0, 1]``) are ``data_mean``/``data_std``."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    if cfg.size == 0:
        raise ValueError("views.size is 0 (chosen from the data by vicreg train); give a size, e.g. 32")
    if cfg.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = tuple(data_mean), tuple(data_std)
        if min(std) <= 0:
            raise ValueError(
                f"the training images have a constant channel (standard deviation {std}); check the data, or "
                "normalise with --views.normalize imagenet"
            )
    if len(mean) != channels:  # ImageNet statistics on grey images: their average
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    jitter: dict[str, Any] = {
        "brightness": 0.4 * cfg.jitter_strength,
        "contrast": 0.4 * cfg.jitter_strength,
        "saturation": 0.2 * cfg.jitter_strength,
        "hue": min(0.5, 0.1 * cfg.jitter_strength),
    }
    view_a: dict[str, Any]
    view_b: dict[str, Any]
    if cfg.symmetric:
        view_a = view_b = {"blur_p": cfg.symmetric_blur_prob, "solarize_p": cfg.symmetric_solarize_prob}
    else:
        view_a = {"blur_p": cfg.blur_prob_a}
        view_b = {"blur_p": cfg.blur_prob_b, "solarize_p": cfg.solarize_prob_b}
    return ImageViews(
        cfg.size,
        symmetric=cfg.symmetric,
        mean=mean,
        std=std,
        view_a=view_a,
        view_b=view_b,
        crop_scale=(cfg.crop_scale_min, 1.0),
        local_crops=cfg.local_crops,
        local_size=cfg.local_size or None,
        local_crop_scale=(cfg.local_crop_scale_min, cfg.local_crop_scale_max),
        **jitter,
    )


def _non_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
