"""Batched image operations with one parameter per sample, on whatever device the batch lives.

Every function takes a float batch ``(N, C, H, W)`` with values in ``[0, 1]`` (``C`` is 1 or 3) and
per-sample parameters as tensors of length ``N``; none loops over samples in Python. For fixed parameters each
one matches the single-image ``torchvision.transforms.v2.functional`` operation named in its docstring
(``tests/test_views.py`` states the tolerances). A sample whose parameter is the neutral value (factor 1,
shift 0, mask False) comes out unchanged, which is how "apply with probability p" is done without branching
on tensors. Public functions return new tensors; the ``_name_`` forms work in place for ``apply_view`` and
take their temporaries from a :class:`Scratch`: on CPU every fresh image-sized tensor costs page faults.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GRAY_WEIGHTS",
    "Scratch",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "gaussian_blur",
    "grayscale",
    "resized_crop",
    "solarize",
]

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
"""ITU-R 601 luma weights, as torchvision's ``rgb_to_grayscale`` (PIL's ``convert("L")`` uses 0.299)."""


class Scratch:
    """Named temporary tensors, reused while their shape, dtype and device stay the same.

    On CPU every fresh image-sized tensor is fresh memory from the OS, and touching it costs a page fault
    per 4 KiB: at 32 px that was about 40% of the time of a view. :class:`~vicreg.augment.ImageViews` keeps
    one ``Scratch`` between calls on CPU; the public functions here use a throwaway one. Not for use by two
    threads at once. Pickling drops the buffers (DataLoader workers start empty).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """An uninitialised tensor of ``shape`` on ``like``'s device, of ``dtype`` (default ``like``'s)."""
        dtype = like.dtype if dtype is None else dtype
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(shape, dtype=dtype, device=like.device)
        return buf

    def __getstate__(self) -> dict[str, Any]:
        return {"_buffers": {}}


def _per_sample(v: Tensor) -> Tensor:
    """``(N,)`` -> ``(N, 1, 1, 1)`` so that it broadcasts over a batch of images."""
    return v.reshape(-1, 1, 1, 1)


def _weight(mask: Tensor, x: Tensor) -> Tensor:
    """A boolean ``(N,)`` mask as a 0/1 ``lerp`` weight ``(N, 1, 1, 1)``: ``a.lerp_(b, w)`` is then an exact
    per-sample select (``torch.where`` on image-sized tensors was 20-40x slower on CPU)."""
    return _per_sample(mask).to(x.dtype)


def _gray(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Luma ``(N, 1, H, W)`` (written into ``out`` when given); a one-channel batch is its own luma."""
    if x.shape[1] == 1:
        return x if out is None else out.copy_(x)
    r, g, b = x.unbind(1)
    out = torch.mul(r.unsqueeze(1), GRAY_WEIGHTS[0], out=out)
    return out.add_(g.unsqueeze(1), alpha=GRAY_WEIGHTS[1]).add_(b.unsqueeze(1), alpha=GRAY_WEIGHTS[2])


def _axis_coords(start: Tensor, length: Tensor, out: int, in_size: int, clamp: bool) -> Tensor:
    """Normalised ``grid_sample`` coordinates ``(N, out)`` along one axis of the box ``[start, start + len)``.

    Source pixel of output pixel ``o``: ``start + (o + 0.5) * length / out - 0.5`` (half-pixel centres, as
    ``F.interpolate(align_corners=False)``). With ``clamp`` it is kept inside the box, as ``interpolate``
    keeps it inside the cropped tensor, so bilinear sampling equals torchvision's crop-then-resize.
    """
    o = torch.arange(out, device=start.device, dtype=torch.float32) + 0.5
    length = length.float()[:, None]
    src = o * (length / out) - 0.5
    if clamp:
        src = torch.minimum(src.clamp(min=0.0), length - 1)
    return (2 * (start.float()[:, None] + src) + 1) / in_size - 1


def resized_crop(
    x: Tensor,
    boxes: Tensor,
    size: tuple[int, int],
    flip: Tensor | None = None,
    interpolation: str = "bilinear",
    scratch: Scratch | None = None,
) -> Tensor:
    """Crop each sample to its box, resize it to ``size`` and optionally flip it, in one ``grid_sample``.

    ``boxes`` is ``(N, 4)`` integer ``(top, left, height, width)``; ``flip`` a boolean ``(N,)`` horizontal
    flip after the resize (it reverses the sampling columns, so it costs nothing). Bilinear equals
    ``resized_crop(img, top, left, height, width, size, BILINEAR, antialias=False)`` then ``hflip``.
    Bicubic (``grid_sample``'s a = -0.75 kernel, like ``F.interpolate``) reads the real pixels just outside
    the box where torchvision repeats the box's edge; its overshoot is clamped to ``[0, 1]``. Neither
    antialiases.
    """
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    in_h, in_w = x.shape[-2:]
    out_h, out_w = size
    bilinear = interpolation == "bilinear"
    top, left, height, width = boxes.unbind(1)
    ys = _axis_coords(top, height, out_h, in_h, clamp=bilinear)
    xs = _axis_coords(left, width, out_w, in_w, clamp=bilinear)
    if flip is not None:
        xs = torch.where(flip[:, None], xs.flip(1), xs)
    grid = (scratch or Scratch()).get("grid", (x.shape[0], out_h, out_w, 2), x)
    grid[..., 0] = xs[:, None, :]
    grid[..., 1] = ys[:, :, None]
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    return out if bilinear else out.clamp_(0, 1)


def _blend_(x: Tensor, target: Tensor, factor: Tensor) -> Tensor:  # for the single-operation functions
    """In place: ``clamp(factor * x + (1 - factor) * target, 0, 1)``; exact identity where ``factor == 1``."""
    return x.lerp_(target.expand_as(x), _per_sample(1 - factor).to(x.dtype)).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(factor * x, 0, 1)`` per sample (torchvision ``adjust_brightness``)."""
    return (x * _per_sample(factor).to(x.dtype)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each sample with the mean of its luma (torchvision ``adjust_contrast``)."""
    return _blend_(x.clone(), _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each sample with its luma image (torchvision ``adjust_saturation``); identity on one channel."""
    if x.shape[1] == 1:
        return x.clone()
    return _blend_(x.clone(), _gray(x), factor)


def _hue_into(x: Tensor, shift: Tensor, out: Tensor, scratch: Scratch) -> Tensor:
    """Write ``x`` with its HSV hue rotated by ``shift`` turns into ``out`` (not ``x`` itself).

    Value (max) and chroma (max - min) are kept, so only the hue is computed: ``H`` in sextants ``[0, 6)``,
    then each output channel is ``max - chroma * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + H) mod 6`` and
    ``n`` = 5, 3, 1 for R, G, B: the HSV -> RGB map without branches. Masks are 0/1 lerp weights and the
    temporaries are reused, because on CPU every fresh image-sized tensor costs page faults.
    """
    r, g, b = x.unbind(1)
    maxc, chroma, inv, h, tmp_a, tmp_b = (scratch.get(f"hue{i}", r.shape, x) for i in range(6))
    torch.maximum(torch.maximum(r, g, out=maxc), b, out=maxc)
    torch.minimum(torch.minimum(r, g, out=chroma), b, out=chroma)
    torch.sub(maxc, chroma, out=chroma)
    torch.clamp(chroma, min=1e-12, out=inv).reciprocal_()  # chroma == 0: any finite value, the hue is unused
    # H for each choice of the max channel; torchvision's tie order is r, then g, then b.
    torch.sub(g, b, out=h).mul_(inv)
    torch.sub(b, r, out=tmp_a).mul_(inv).add_(2.0)
    torch.sub(r, g, out=tmp_b).mul_(inv).add_(4.0)
    tmp_a.lerp_(tmp_b, torch.ne(g, maxc, out=inv))  # inv is no longer needed: it holds the masks
    h.lerp_(tmp_a, torch.ne(r, maxc, out=inv))
    h.add_(_per_sample(6.0 * shift).squeeze(1).to(x.dtype))
    h.sub_(torch.div(h, 6.0, out=tmp_a).floor_().mul_(6.0))  # rotated H mod 6, in [0, 6)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.add(h, n, out=tmp_a)  # in [n, n + 6)
        k.sub_(torch.ge(k, 6.0, out=tmp_b).mul_(6.0))  # mod 6
        ramp = torch.minimum(k, tmp_b.copy_(k).neg_().add_(4.0), out=k).clamp_(0, 1)
        torch.sub(maxc, ramp.mul_(chroma), out=out[:, channel])
    return out.clamp_(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of each sample by ``shift`` turns, in ``[-0.5, 0.5]`` (torchvision ``adjust_hue``).

    Identity on one channel.
    """
    if x.shape[1] == 1:
        return x.clone()
    return _hue_into(x, shift, torch.empty_like(x), Scratch())


def _color_jitter_(
    x: Tensor,
    apply: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    order: Tensor,
    hue_position: Tensor,
    scratch: Scratch,
) -> Tensor:
    n = x.shape[0]
    factors = torch.stack([brightness, contrast, saturation], dim=1).to(x.dtype)
    if x.shape[1] == 1:  # saturation is the identity on one channel
        factors[:, 2] = 1.0
    # Per-sample tables for the 6 blends (3 slots before the hue, 3 after), built once: (N, 6, 1, 1, 1).
    slots = torch.arange(3, device=x.device)
    before_hue = slots[None, :] < hue_position[:, None]
    active = apply[:, None] & torch.cat([before_hue, ~before_hue], dim=1)
    slot_factors = factors.gather(1, order).repeat(1, 2)
    lerp_weight = torch.where(active, 1 - slot_factors, torch.zeros_like(slot_factors)).view(n, 6, 1, 1, 1)
    is_contrast = (order == 1).to(x.dtype).repeat(1, 2).view(n, 6, 1, 1, 1)
    is_saturation = (order == 2).to(x.dtype).repeat(1, 2).view(n, 6, 1, 1, 1)
    gray = scratch.get("gray", (n, 1, *x.shape[2:]), x)
    for blend in range(6):
        _gray(x, out=gray)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        target = gray.mul_(is_saturation[:, blend]).addcmul_(mean, is_contrast[:, blend])
        x.lerp_(target.expand_as(x), lerp_weight[:, blend]).clamp_(0, 1)
        if blend == 2 and x.shape[1] == 3:
            hued = _hue_into(x, hue, scratch.get("image", x.shape, x), scratch)
            x.lerp_(hued, _weight(apply, x))
    return x


def color_jitter(
    x: Tensor,
    apply: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    order: Tensor,
    hue_position: Tensor,
) -> Tensor:
    """torchvision's ``ColorJitter`` with each sample's own factors and own order of the four operations.

    Args:
        x: ``(N, C, H, W)`` in ``[0, 1]``.
        apply: boolean ``(N,)``; samples where it is False are returned unchanged.
        brightness, contrast, saturation: ``(N,)`` blend factors (1 = identity); hue: ``(N,)`` shift in turns.
        order: ``(N, 3)`` a permutation of ``0, 1, 2`` = brightness, contrast, saturation, per sample.
        hue_position: ``(N,)`` in ``0..3``: the hue runs after that many of the ``order`` operations.

    A uniform permutation of 3 plus a uniform insertion point for hue is a uniform permutation of all 4, as
    torchvision draws. Brightness, contrast and saturation are all ``lerp(target, x, f)`` with target 0, the
    mean luma, or the luma image, so each of the 3 slots is one blend whose target is chosen per sample; the
    slots are applied twice (before the hue, then after it) with factor 1 where a slot is on the other side,
    so the costly hue runs once: 6 blends and 1 hue for any mix of orders.
    """
    return _color_jitter_(x.clone(), apply, brightness, contrast, saturation, hue, order, hue_position, Scratch())


def _grayscale_(x: Tensor, apply: Tensor, scratch: Scratch) -> Tensor:
    if x.shape[1] == 1:
        return x
    gray = _gray(x, out=scratch.get("gray", (x.shape[0], 1, *x.shape[2:]), x))
    return x.lerp_(gray.expand_as(x), _weight(apply, x))


def grayscale(x: Tensor, apply: Tensor) -> Tensor:
    """Replace the samples where ``apply`` by their luma on every channel (``rgb_to_grayscale(x, 3)``).

    Identity on one channel.
    """
    return _grayscale_(x.clone(), apply, Scratch())


def _gaussian_kernels(sigma: Tensor, apply: Tensor, kernel_size: int, dtype: torch.dtype) -> Tensor:
    """``(N, kernel_size)`` normalised 1-D Gaussians on integer offsets; unit impulses where not ``apply``."""
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=dtype)
    pdf = torch.exp(-0.5 * (t[None, :] / sigma[:, None].to(dtype)) ** 2)
    impulse = (t == 0).to(dtype).expand_as(pdf)
    return torch.where(apply[:, None], pdf / pdf.sum(dim=1, keepdim=True), impulse)


def _blur_pass(src: Tensor, dst: Tensor, weights: Tensor, dim: int) -> Tensor:
    """``dst`` = ``src`` convolved along ``dim`` with each sample's symmetric kernel ``weights`` ``(N, k)``,
    reflect padding; one multiply-add per tap on shifted views, so no padded copy and no grouped convolution.
    """
    k = weights.shape[1]
    half, length = k // 2, src.shape[dim]
    torch.mul(src, _per_sample(weights[:, half]), out=dst)
    for d in range(1, half + 1):
        w = _per_sample(weights[:, half + d])
        dst.narrow(dim, 0, length - d).addcmul_(src.narrow(dim, d, length - d), w)  # right neighbours
        dst.narrow(dim, d, length - d).addcmul_(src.narrow(dim, 0, length - d), w)  # left neighbours
        # Reflected neighbours at the two edges: index -i reads i, index length - 1 + i reads length - 1 - i.
        dst.narrow(dim, 0, d).addcmul_(src.narrow(dim, 1, d).flip(dim), w)
        dst.narrow(dim, length - d, d).addcmul_(src.narrow(dim, length - 1 - d, d).flip(dim), w)
    return dst


def _gaussian_blur_(x: Tensor, sigma: Tensor, apply: Tensor, kernel_size: int, scratch: Scratch) -> Tensor:
    weights = _gaussian_kernels(sigma, apply, kernel_size, x.dtype)
    rows = _blur_pass(x, scratch.get("image", x.shape, x), weights, dim=3)
    return _blur_pass(rows, x, weights, dim=2)


def gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with each sample's own ``sigma`` (torchvision ``gaussian_blur(x, [k, k], [sigma])``).

    Reflect padding and an odd ``kernel_size`` (less than twice the smaller side), applied as a row pass
    then a column pass. Samples where ``apply`` is False go through a unit impulse and come out unchanged.
    """
    return _gaussian_blur_(x.clone(), sigma, apply, kernel_size, Scratch())


def _solarize_(x: Tensor, apply: Tensor, threshold: float, scratch: Scratch) -> Tensor:
    """In place: ``|x - s|`` with ``s`` = 1 where inverted is exactly ``1 - x`` there and ``x`` elsewhere."""
    s = torch.ge(x, threshold, out=scratch.get("image", x.shape, x))
    s.mul_(_weight(apply, x))
    return x.sub_(s).abs_()


def solarize(x: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert the pixels ``>= threshold`` of the samples where ``apply`` (torchvision ``solarize``)."""
    return _solarize_(x.clone(), apply, threshold, Scratch())
