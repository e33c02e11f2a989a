"""ImageViews and its batched operations.

Each batched operation is compared, sample by sample, with the torchvision.transforms.v2.functional operation
it reproduces, on float images in [0, 1]. Tolerances: absolute 1e-5 (float32 rounding of a different but
equivalent formula: lerp instead of a weighted sum, separable instead of 2-D blur kernel, a branch-free HSV),
1e-4 for bicubic; exact where the arithmetic is the same (brightness, grayscale, solarize, identities).
"""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from vicreg import ImageViews, OneViewConfig
from vicreg.augment import functional as AF
from vicreg.augment.images import (
    PAPER_VIEW_A,
    PAPER_VIEW_B,
    SYMMETRIC_VIEW,
    apply_view,
    default_blur_kernel_size,
    sample_view_params,
)

ATOL = 1e-5


def images(n: int = 6, c: int = 3, h: int = 20, w: int = 24, seed: int = 0, quantised: bool = True) -> torch.Tensor:
    """Random images; quantised to uint8 levels so that channel ties (hue edge cases) occur."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    if quantised:
        x = (x * 255).round() / 255
        x[0, :, :4] = x[0, :1, :4]  # some gray pixels (chroma 0)
    return x


def factors(n: int, lo: float, hi: float, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * (hi - lo) + lo


def per_sample(fn, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    return torch.stack([fn(x[i], *(float(a[i]) for a in args)) for i in range(x.shape[0])])


# ---------------------------------------------------------------------------------------------------------
# Each operation against torchvision, for fixed per-sample parameters


@pytest.mark.parametrize("out_size", [(16, 16), (40, 30), (7, 9)])
def test_resized_crop_and_flip_match_torchvision(out_size):
    x = images(h=20, w=24)
    p = sample_view_params(OneViewConfig(), x.shape[0], (20, 24), torch.Generator().manual_seed(3))
    flip = torch.tensor([True, False, True, False, True, False])
    got = AF.resized_crop(x, p.boxes, out_size, flip)
    for i in range(x.shape[0]):
        top, left, h, w = (int(v) for v in p.boxes[i])
        ref = TF.resized_crop(x[i], top, left, h, w, list(out_size), InterpolationMode.BILINEAR, antialias=False)
        ref = TF.horizontal_flip(ref) if flip[i] else ref
        torch.testing.assert_close(got[i], ref, atol=ATOL, rtol=0)


def test_bicubic_matches_torchvision_on_the_whole_image():
    x = images(h=12, w=12)
    boxes = torch.tensor([[0, 0, 12, 12]] * x.shape[0])
    got = AF.resized_crop(x, boxes, (20, 20), interpolation="bicubic")
    ref = TF.resize(x, [20, 20], InterpolationMode.BICUBIC, antialias=False).clamp(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_brightness_contrast_saturation_hue_match_torchvision():
    x = images()
    n = x.shape[0]
    b, c, s, h = (
        factors(n, 0.6, 1.4, 1),
        factors(n, 0.6, 1.4, 2),
        factors(n, 0.8, 1.2, 3),
        factors(n, -0.5, 0.5, 4),
    )
    torch.testing.assert_close(AF.adjust_brightness(x, b), per_sample(TF.adjust_brightness, x, b), atol=0, rtol=0)
    torch.testing.assert_close(AF.adjust_contrast(x, c), per_sample(TF.adjust_contrast, x, c), atol=ATOL, rtol=0)
    got = AF.adjust_saturation(x, s)
    torch.testing.assert_close(got, per_sample(TF.adjust_saturation, x, s), atol=ATOL, rtol=0)
    torch.testing.assert_close(AF.adjust_hue(x, h), per_sample(TF.adjust_hue, x, h), atol=ATOL, rtol=0)


def test_hue_on_pure_and_gray_colours():
    # The six sextant boundaries and gray, where the max-channel choice and chroma = 0 matter.
    colours = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0.5, 0.5, 0.5], [0.2, 0.7, 0.7]]
    ).float()
    x = colours[:, :, None, None].expand(-1, -1, 2, 2).contiguous()
    for shift in (-0.5, -0.25, -0.1, 0.0, 0.1, 1 / 6, 0.5):
        h = torch.full((x.shape[0],), shift)
        torch.testing.assert_close(AF.adjust_hue(x, h), per_sample(TF.adjust_hue, x, h), atol=ATOL, rtol=0)


def test_grayscale_and_solarize_match_torchvision():
    x = images()
    apply = torch.tensor([True, False, True, True, False, True])
    got = AF.grayscale(x, apply)
    for i in range(x.shape[0]):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if apply[i] else x[i]
        torch.testing.assert_close(got[i], ref, atol=0, rtol=0)
    got = AF.solarize(x, apply)
    for i in range(x.shape[0]):
        torch.testing.assert_close(got[i], TF.solarize(x[i], 0.5) if apply[i] else x[i], atol=0, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 7, 15])
def test_gaussian_blur_matches_torchvision(kernel_size):
    x = images(h=8, w=11)
    sigma = factors(x.shape[0], 0.1, 2.0)
    apply = torch.tensor([True, True, False, True, True, False])
    got = AF.gaussian_blur(x, sigma, apply, kernel_size)
    for i in range(x.shape[0]):
        ref = TF.gaussian_blur(x[i], [kernel_size] * 2, [float(sigma[i])] * 2) if apply[i] else x[i]
        torch.testing.assert_close(got[i], ref, atol=ATOL if apply[i] else 0, rtol=0)


OPS = {
    "b": lambda img, f: TF.adjust_brightness(img, f),
    "c": lambda img, f: TF.adjust_contrast(img, f),
    "s": lambda img, f: TF.adjust_saturation(img, f),
    "h": lambda img, f: TF.adjust_hue(img, f),
}


def _jitter_reference(img, apply, fac, order3, hue_position):
    """torchvision's ColorJitter for one sample: the 4 ops in the order given by (order3, hue_position)."""
    if not apply:
        return img
    names = ["bcs"[int(o)] for o in order3]
    names.insert(int(hue_position), "h")
    for name in names:
        img = OPS[name](img, fac[name])
    return img


def test_color_jitter_matches_torchvision_in_every_order():
    perms = list(itertools.permutations(range(3)))
    n = len(perms) * 4 + 2
    x = images(n=n, h=6, w=5)
    order = torch.tensor([p for p in perms for _ in range(4)] + [[0, 1, 2]] * 2)
    hue_position = torch.tensor([k for _ in perms for k in range(4)] + [0, 3])
    apply = torch.ones(n, dtype=torch.bool)
    apply[-2:] = False
    b, c, s, h = (
        factors(n, 0.6, 1.4, 1),
        factors(n, 0.6, 1.4, 2),
        factors(n, 0.8, 1.2, 3),
        factors(n, -0.1, 0.1, 4),
    )
    got = AF.color_jitter(x, apply, b, c, s, h, order, hue_position)
    for i in range(n):
        fac = {"b": float(b[i]), "c": float(c[i]), "s": float(s[i]), "h": float(h[i])}
        ref = _jitter_reference(x[i], bool(apply[i]), fac, order[i], hue_position[i])
        torch.testing.assert_close(got[i], ref, atol=ATOL if apply[i] else 0, rtol=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_whole_view_matches_torchvision_composition(channels):
    x = images(n=8, c=channels, h=18, w=22)
    cfg = OneViewConfig(jitter_p=0.7, grayscale_p=0.5, blur_p=0.5, solarize_p=0.5)
    p = sample_view_params(cfg, x.shape[0], (18, 22), torch.Generator().manual_seed(5))
    size, k = (16, 16), 5
    got = apply_view(x, p, size, blur_kernel_size=k)
    for i in range(x.shape[0]):
        top, left, h, w = (int(v) for v in p.boxes[i])
        img = TF.resized_crop(x[i], top, left, h, w, list(size), InterpolationMode.BILINEAR, antialias=False)
        img = TF.horizontal_flip(img) if p.flip[i] else img
        fac = {"b": float(p.brightness[i]), "c": float(p.contrast[i]), "s": float(p.saturation[i])}
        fac["h"] = float(p.hue[i])
        img = _jitter_reference(img, bool(p.jitter[i]), fac, p.order[i], p.hue_position[i])
        img = TF.rgb_to_grayscale(img, num_output_channels=channels) if p.grayscale[i] else img
        img = TF.gaussian_blur(img, [k, k], [float(p.sigma[i])] * 2) if p.blur[i] else img
        img = TF.solarize(img, 0.5) if p.solarize[i] else img
        torch.testing.assert_close(got[i], img, atol=ATOL, rtol=0)


def test_neutral_parameters_are_the_identity():
    x = images(n=4, h=16, w=16)
    cfg = OneViewConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0)
    views = ImageViews(16, view_a=cfg, view_b=cfg, normalize=False)
    v_a, v_b = views(x)
    torch.testing.assert_close(v_a, x, atol=0, rtol=0)
    torch.testing.assert_close(v_b, x, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Statistics of the random parameters


def _within_3_sigma(mask: torch.Tensor, p: float) -> None:
    n = mask.numel()
    sigma = math.sqrt(max(p * (1 - p), 1e-12) / n)
    assert abs(mask.float().mean().item() - p) <= 3 * sigma + 1e-9, (mask.float().mean().item(), p)


@pytest.mark.parametrize(
    "cfg",
    [
        PAPER_VIEW_A,
        PAPER_VIEW_B,
        OneViewConfig(flip_p=0.3, jitter_p=0.1, grayscale_p=0.9, blur_p=0.0, solarize_p=1),
    ],
)
def test_each_operation_fires_with_its_probability(cfg):
    n = 20_000
    p = sample_view_params(cfg, n, (64, 64), torch.Generator().manual_seed(0))
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        _within_3_sigma(getattr(p, name), getattr(cfg, f"{name}_p"))
    for k in range(4):
        _within_3_sigma(p.hue_position == k, 0.25)
    for perm in itertools.permutations(range(3)):
        _within_3_sigma((p.order == torch.tensor(perm)).all(dim=1), 1 / 6)
    for name, lo, hi in (
        ("brightness", 1 - cfg.brightness, 1 + cfg.brightness),
        ("contrast", 1 - cfg.contrast, 1 + cfg.contrast),
        ("saturation", 1 - cfg.saturation, 1 + cfg.saturation),
        ("hue", -cfg.hue, cfg.hue),
        ("sigma", *cfg.blur_sigma),
    ):
        v = getattr(p, name)
        assert lo <= v.min().item() and v.max().item() <= hi
        assert abs(v.mean().item() - (lo + hi) / 2) <= 3 * (hi - lo) / math.sqrt(12 * n)


def _ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    both = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, both, right=True) / a.numel()
    cdf_b = torch.searchsorted(b.sort().values, both, right=True) / b.numel()
    return (cdf_a - cdf_b).abs().max().item()


@pytest.mark.parametrize("image_size", [(500, 500), (300, 450), (32, 32)])
def test_crop_boxes_follow_torchvision_distribution(image_size):
    height, width = image_size
    n_ours, n_ref = 20_000, 2_000
    boxes = sample_view_params(OneViewConfig(), n_ours, image_size, torch.Generator().manual_seed(0)).boxes
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area, ratio = (h * w).double() / (height * width), w.double() / h.double()
    if min(image_size) >= 300:  # rounding to whole pixels aside, the configured ranges hold
        assert area.min() >= 0.08 - 0.01 and area.max() <= 1
        assert ratio.min() >= 3 / 4 - 0.01 and ratio.max() <= 4 / 3 + 0.01
    torch.manual_seed(0)
    ref = torch.tensor(
        [RandomResizedCrop.get_params(torch.empty(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n_ref)]
    )
    ref_area, ref_ratio = (ref[:, 2] * ref[:, 3]).double() / (height * width), ref[:, 3].double() / ref[:, 2]
    threshold = 1.95 * math.sqrt((n_ours + n_ref) / (n_ours * n_ref))  # two-sample KS at alpha = 0.001
    for ours, theirs in (
        (area, ref_area),
        (ratio, ref_ratio),
        (top.double() / height, ref[:, 0].double() / height),
    ):
        assert _ks_statistic(ours, theirs) < threshold


def test_crop_falls_back_to_torchvision_central_crop():
    # A 10 x 100 image never fits a box of ratio <= 4/3 and area >= 90%: the central crop is used.
    cfg = OneViewConfig(crop_scale=(0.9, 1.0))
    boxes = sample_view_params(cfg, 16, (10, 100), torch.Generator().manual_seed(0)).boxes
    ref = RandomResizedCrop.get_params(torch.empty(1, 10, 100), [0.9, 1.0], [3 / 4, 4 / 3])
    assert (boxes == torch.tensor(ref)).all()


# ---------------------------------------------------------------------------------------------------------
# ImageViews: shapes, dtypes, ranges, one channel, determinism, options, errors


def test_shapes_dtype_and_range():
    x = torch.randint(0, 256, (5, 3, 40, 36), dtype=torch.uint8)
    v_a, v_b = ImageViews(32)(x)
    assert v_a.shape == v_b.shape == (5, 3, 32, 32)
    assert v_a.dtype == v_b.dtype == torch.float32
    raw_a, raw_b = ImageViews((24, 16), normalize=False)(x)
    assert raw_a.shape == (5, 3, 24, 16)
    for v in (raw_a, raw_b):
        assert v.min() >= 0 and v.max() <= 1
    lo = (0 - max(ImageViews(32).mean)) / min(ImageViews(32).std)
    hi = (1 - min(ImageViews(32).mean)) / min(ImageViews(32).std)
    assert v_a.min() >= lo and v_a.max() <= hi


def test_uint8_and_float_input_give_the_same_views():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    views = ImageViews(16)
    a8, b8 = views(x, generator=torch.Generator().manual_seed(1))
    af, bf = views(x.float() / 255, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a8, af, atol=1e-6, rtol=0)
    torch.testing.assert_close(b8, bf, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    x = images(n=4)
    v_a, v_b = ImageViews(16)(x.to(dtype), generator=torch.Generator().manual_seed(0))
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    assert v_a.dtype == v_b.dtype == expected
    assert torch.isfinite(v_a).all() and torch.isfinite(v_b).all()


def test_one_channel_input():
    x = torch.randint(0, 256, (6, 1, 20, 20), dtype=torch.uint8)
    v_a, v_b = ImageViews(16)(x)
    assert v_a.shape == v_b.shape == (6, 1, 16, 16)
    assert torch.isfinite(v_a).all() and torch.isfinite(v_b).all()
    raw, _ = ImageViews(16, normalize=False)(x, generator=torch.Generator().manual_seed(0))
    norm, _ = ImageViews(16)(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(norm, (raw - 0.449) / 0.226, atol=1e-5, rtol=0)
    # Saturation, hue and grayscale do nothing to one channel.
    x1 = images(c=1)
    ones = torch.ones(x1.shape[0], dtype=torch.bool)
    assert torch.equal(AF.adjust_saturation(x1, factors(6, 0.8, 1.2)), x1)
    assert torch.equal(AF.adjust_hue(x1, factors(6, -0.1, 0.1)), x1)
    assert torch.equal(AF.grayscale(x1, ones), x1)
    torch.testing.assert_close(
        AF.adjust_contrast(x1, factors(6, 0.6, 1.4)), per_sample(TF.adjust_contrast, x1, factors(6, 0.6, 1.4))
    )


def test_same_seed_same_views_and_different_seed_different_views():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    views = ImageViews(16)
    a1, b1 = views(x, generator=torch.Generator().manual_seed(7))
    a2, b2 = views(x, generator=torch.Generator().manual_seed(7))
    a3, _ = views(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, a3)
    assert not torch.equal(a1, b1)  # the two views are drawn independently


def test_defaults_are_the_paper_pair_and_options_override_them():
    views = ImageViews(32)
    assert views.view_a == PAPER_VIEW_A and views.view_b == PAPER_VIEW_B
    assert (views.view_a.blur_p, views.view_a.solarize_p) == (1.0, 0.0)
    assert (views.view_b.blur_p, views.view_b.solarize_p) == (0.1, 0.2)
    assert views.blur_kernel_size == 3 and default_blur_kernel_size(224) == 23 and default_blur_kernel_size(96) == 9
    sym = ImageViews(32, symmetric=True)
    assert sym.view_a == sym.view_b == SYMMETRIC_VIEW
    custom = ImageViews(32, hue=0.0, view_b={"solarize_p": 0.5})
    assert custom.view_a.hue == custom.view_b.hue == 0.0
    assert custom.view_b.solarize_p == 0.5 and custom.view_a.solarize_p == 0.0
    given = OneViewConfig(blur_p=0.25)
    assert ImageViews(32, view_a=given).view_a == given


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flip_p": 1.5}, "flip_p"),
        ({"crop_scale": (0.5, 0.1)}, "crop_scale"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        ({"hue": 0.7}, "hue"),
        ({"brightness": -0.1}, "brightness"),
        ({"crop_ratio": (1.0,)}, "crop_ratio"),
    ],
)
def test_view_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OneViewConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        ImageViews(32, **kwargs)


def test_bad_arguments_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown view option"):
        ImageViews(32, blur=0.5)
    with pytest.raises(ValueError, match="blur_kernel_size"):
        ImageViews(32, blur_kernel_size=4)
    with pytest.raises(ValueError, match="interpolation"):
        ImageViews(32, interpolation="nearest")
    with pytest.raises(ValueError, match="mean and std"):
        ImageViews(32, mean=(0.5, 0.5), std=(0.5, 0.5))
    views = ImageViews(16)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        views(torch.zeros(3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        views(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dtype"):
        views(torch.zeros(2, 3, 16, 16, dtype=torch.int32))


def test_reused_scratch_memory_never_leaks_into_returned_views():
    views = ImageViews(12)
    x = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    a1, b1 = views(x, generator=torch.Generator().manual_seed(2))
    kept = a1.clone(), b1.clone()
    views(torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8))  # same shapes: same scratch buffers
    views(torch.randint(0, 256, (4, 1, 20, 20), dtype=torch.uint8))  # other shapes: new buffers
    assert torch.equal(a1, kept[0]) and torch.equal(b1, kept[1])
    a2, b2 = views(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    fresh = ImageViews(12)(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(fresh[0], a1) and torch.equal(fresh[1], b1)
    clone = pickle.loads(pickle.dumps(views))  # DataLoader workers: the copy starts without buffers
    assert clone._scratch._buffers == {}
    assert torch.equal(clone(x, generator=torch.Generator().manual_seed(2))[0], a1)


@pytest.mark.cuda
def test_cpu_generator_gives_the_same_views_on_cuda():
    x = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    views = ImageViews(16)
    cpu = views(x, generator=torch.Generator().manual_seed(3))
    gpu = views(x.cuda(), generator=torch.Generator().manual_seed(3))
    for a, b in zip(cpu, gpu, strict=True):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=0)
