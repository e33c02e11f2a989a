"""The views of multi-band / 16-bit images (vicreg.augment.bands): determinism, shapes, per-band behaviour."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vicreg.augment.bands import (
    GREYSCALE16_VIEW_A,
    MULTISPECTRAL_VIEW_A,
    RECIPES,
    BandViewConfig,
    BandViews,
    BandViewsConfig,
    apply_band_view,
    band_views,
    sample_band_view_params,
)
from vicreg.data.bands import BandStats, band_stats, normalize_bands

# Every operation off: the view is the (normalised) crop.
NEUTRAL = BandViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, blur_p=0.0)


def _batch(n: int = 8, c: int = 13, size: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, c, size, size, generator=gen) * 4000 + 500).to(torch.uint16)
    x[0, 0, 0, 0] = 65535
    return x


def _views(x: torch.Tensor, a: BandViewConfig, b: BandViewConfig | None = None, **kw: object) -> BandViews:
    return BandViews(x.shape[-1], stats=band_stats(x), view_a=a, view_b=b or a, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("channels", [1, 4, 13])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_shapes_dtype_and_no_nan(channels: int, recipe: str) -> None:
    x = _batch(c=channels, size=20)
    views = band_views(BandViewsConfig(recipe=recipe, size=12), band_stats(x))  # type: ignore[arg-type]
    v_a, v_b = views(x, torch.Generator().manual_seed(0))
    for v in (v_a, v_b):
        assert v.shape == (8, channels, 12, 12) and v.dtype == torch.float32
        assert bool(torch.isfinite(v).all())


def test_same_generator_same_views_and_different_seeds_differ() -> None:
    x = _batch()
    views = _views(x, MULTISPECTRAL_VIEW_A, GREYSCALE16_VIEW_A)
    a1, b1 = views(x, torch.Generator().manual_seed(3))
    a2, b2 = views(x, torch.Generator().manual_seed(3))
    a3, _ = views(x, torch.Generator().manual_seed(4))
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and not torch.equal(a1, a3)
    assert not torch.equal(a1, b1)


def test_neutral_view_is_the_normalised_batch_and_input_is_untouched() -> None:
    for dtype in (torch.uint8, torch.uint16, torch.int16, torch.float32):
        x = _batch(c=4).to(dtype) if dtype != torch.uint8 else (_batch(c=4).to(torch.int32) % 256).to(torch.uint8)
        before = x.clone()
        stats = band_stats(x)
        v = BandViews(16, stats=stats, view_a=NEUTRAL, view_b=NEUTRAL).view(x, NEUTRAL)
        assert torch.allclose(v, normalize_bands(x, stats.mean, stats.std), atol=1e-4, rtol=1e-5)
        assert torch.equal(x, before)


def test_values_near_65535_are_not_clipped_by_the_views() -> None:
    x = torch.full((2, 1, 8, 8), 1000, dtype=torch.uint16)
    x[:, :, :4] = 65535
    stats = BandStats(mean=(1000.0,), std=(100.0,), low=(900.0,), high=(1100.0,))
    v = BandViews(8, stats=stats, view_a=NEUTRAL, view_b=NEUTRAL).view(x, NEUTRAL)
    assert torch.allclose(v[:, :, :4], torch.full_like(v[:, :, :4], (65535 - 1000) / 100), rtol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize(("hflip", "vflip"), [(False, False), (True, False), (False, True), (True, True)])
def test_rotations_and_flips_match_torch(k: int, hflip: bool, vflip: bool) -> None:
    x = _batch(n=1, c=3, size=8)
    cfg = replace(NEUTRAL, rotate90=True)
    views = _views(x, cfg)
    p = sample_band_view_params(cfg, 1, 3, (8, 8), torch.Generator().manual_seed(0))
    p = p._replace(rot=torch.tensor([k]), flip=torch.tensor([hflip]), vflip=torch.tensor([vflip]))
    u = views._unit(x)
    got = apply_band_view(u, p, (8, 8), scale=torch.ones(3), shift=torch.zeros(3), blur_kernel_size=3)
    want = torch.rot90(u, k, (2, 3))
    want = want.flip(3) if hflip else want
    want = want.flip(2) if vflip else want
    assert torch.allclose(got, want, atol=1e-5)


def test_rotations_and_vertical_flips_only_when_enabled() -> None:
    gen = torch.Generator().manual_seed(0)
    off = sample_band_view_params(replace(MULTISPECTRAL_VIEW_A, rotate90=False, vflip_p=0.0), 512, 2, (8, 8), gen)
    on = sample_band_view_params(MULTISPECTRAL_VIEW_A, 512, 2, (8, 8), gen)
    assert not bool(off.rot.any()) and not bool(off.vflip.any())
    assert set(on.rot.tolist()) == {0, 1, 2, 3} and 0.4 < on.vflip.float().mean() < 0.6
    x = _batch(n=64, c=2, size=8)
    v = _views(x, replace(NEUTRAL, flip_p=0.5)).view(x, replace(NEUTRAL, flip_p=0.5), torch.Generator().manual_seed(1))
    z = normalize_bands(x, *band_stats(x)[:2])
    same = [torch.allclose(v[i], z[i], atol=1e-4) or torch.allclose(v[i], z[i].flip(2), atol=1e-4) for i in range(64)]
    assert all(same)  # only identity or a horizontal flip without rotations
    with pytest.raises(ValueError, match="square output"):
        BandViews((8, 12), stats=band_stats(x), view_a=MULTISPECTRAL_VIEW_A)


def test_per_channel_draws_are_independent_and_shared_draws_are_not() -> None:
    gen = torch.Generator().manual_seed(0)
    per = sample_band_view_params(GREYSCALE16_VIEW_A, 256, 5, (8, 8), gen)
    shared = sample_band_view_params(replace(GREYSCALE16_VIEW_A, per_channel=False), 256, 5, (8, 8), gen)
    for name in ("brightness", "contrast"):
        t = getattr(per, name)
        assert t.shape == (256, 5) and not torch.equal(t[:, 0], t[:, 1])
        assert abs(float(torch.corrcoef(t[:, :2].T)[0, 1])) < 0.2
        s = getattr(shared, name)
        assert bool((s == s[:, :1]).all())
    applied = per.gamma[(per.gamma != 1).any(1)]
    assert applied.shape[0] > 50 and not torch.equal(applied[:, 0], applied[:, 1])


def test_photometric_operations_keep_bands_separate() -> None:
    """With per-band draws, each output band depends on its own input band only (no mixing)."""
    x = _batch(n=4, c=4)
    cfg = replace(GREYSCALE16_VIEW_A, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), noise_p=0.0)
    views = _views(x, cfg)
    y = x.clone()
    y[:, 2] = (y[:, 2].to(torch.int32) // 2).to(torch.uint16)  # change band 2 only
    v_x = views.view(x, cfg, torch.Generator().manual_seed(5))
    v_y = views.view(y, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(v_x[:, [0, 1, 3]], v_y[:, [0, 1, 3]]) and not torch.equal(v_x[:, 2], v_y[:, 2])


def test_band_dropout_keeps_at_least_one_band_and_zeroes_the_others() -> None:
    x = _batch(n=64, c=3)
    cfg = replace(NEUTRAL, dropout_p=1.0, dropout_rate=0.9)
    v = _views(x, cfg).view(x, cfg, torch.Generator().manual_seed(0))
    zero = (v == 0).flatten(2).all(2)  # (N, C) dropped bands
    assert bool(zero.any()) and not bool(zero.all(1).any())


def test_noise_is_scaled_to_the_band_range_and_reproducible() -> None:
    x = torch.full((16, 2, 16, 16), 1000, dtype=torch.uint16)
    stats = BandStats(mean=(1000.0, 1000.0), std=(1.0, 1.0), low=(0.0, 0.0), high=(100.0, 1000.0))
    cfg = replace(NEUTRAL, noise_p=1.0, noise_std=0.1)
    views = BandViews(16, stats=stats, view_a=cfg, view_b=cfg)
    v = views.view(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(v, views.view(x, cfg, torch.Generator().manual_seed(0)))
    ratio = v[:, 1].std() / v[:, 0].std()  # noise in units of each band's range: 1000 vs 100
    assert 9 < float(ratio) < 11


def test_rgb_operations_need_rgb_bands() -> None:
    x = _batch(c=13)
    rgb_cfg = replace(NEUTRAL, grayscale_p=1.0)
    with pytest.raises(ValueError, match="rgb_bands"):
        _views(x, rgb_cfg)
    views = _views(x, rgb_cfg, rgb_bands=(3, 2, 1))
    v = views.view(x, rgb_cfg, torch.Generator().manual_seed(0))
    u = (v - views._shift.view(1, -1, 1, 1)) / views._scale.view(1, -1, 1, 1)  # back to the band range
    assert torch.allclose(u[:, 3], u[:, 2], atol=1e-5) and torch.allclose(u[:, 1], u[:, 3], atol=1e-5)
    z = normalize_bands(x, *band_stats(x)[:2])
    assert torch.allclose(v[:, 4:], z[:, 4:], atol=1e-4)  # the other bands untouched
    x3 = _batch(c=3)
    with pytest.raises(ValueError, match="8-bit RGB"):
        _views(x3, rgb_cfg).view(x3, rgb_cfg)
    x8 = (x3.to(torch.int32) % 256).to(torch.uint8)
    assert _views(x8, rgb_cfg).view(x8, rgb_cfg).shape == (8, 3, 16, 16)


def test_run_config_validates_and_builds_the_recipes() -> None:
    x = _batch(c=13)
    views = band_views(BandViewsConfig(recipe="multispectral", size=16, rgb_bands=(3, 2, 1)), band_stats(x))
    assert views.rgb_bands == (3, 2, 1) and views.view_a.rotate90 and views.view_b.solarize_p == 0.2
    grey = band_views(BandViewsConfig(recipe="greyscale16", size=16, rotations=True), band_stats(x[:, :1]))
    assert grey.view_a.rotate90 and grey.view_a.vflip_p == 0.5 and grey.view_a.per_channel
    assert not band_views(BandViewsConfig(recipe="greyscale16", size=16), band_stats(x[:, :1])).view_a.rotate90
    for bad in ({"recipe": "rgb"}, {"size": 4}, {"crop_scale_min": 0.0}, {"rgb_bands": (1, 2)}):
        with pytest.raises(ValueError, match="views\\."):
            BandViewsConfig(**bad)  # type: ignore[arg-type]
    for bad_view in ({"flip_p": 2.0}, {"gamma": (0.0, 1.0)}, {"hue": 0.7}, {"crop_scale": (0.5, 1.5)}):
        with pytest.raises(ValueError, match="BandViewConfig"):
            BandViewConfig(**bad_view)  # type: ignore[arg-type]


def test_cuda_views_match_cpu_without_noise() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = _batch()
    cfg = replace(MULTISPECTRAL_VIEW_A, noise_p=0.0)
    views = _views(x, cfg)
    cpu = views.view(x, cfg, torch.Generator().manual_seed(0))
    gpu = views.view(x.cuda(), cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-3)
