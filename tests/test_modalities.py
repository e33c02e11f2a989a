"""Signals, tables and two-modality pairs: views, encoders, data and tiny end-to-end runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vicreg import VICReg
from vicreg.augment import PairViews, SignalViewConfig, SignalViews, TableViewConfig, TableViews, TensorPair
from vicreg.augment.signals import apply_signal_view, sample_signal_params
from vicreg.augment.tabular import sample_table_params
from vicreg.checkpoint import read_backbone_state
from vicreg.cli import parse_train_args
from vicreg.config import ModelConfig, OptimConfig, TrainConfig
from vicreg.data import FloatDataset, InMemoryLoader, load_float_rows, load_pairs
from vicreg.encoders import MLPEncoder, ResNet1d
from vicreg.models import build_backbone
from vicreg.probes import extract_features
from vicreg.train import train

NO_AUG = SignalViewConfig(crop_scale=(1.0, 1.0), scale_std=0, warp_std=0, jitter_std=0, mask_p=0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ signal views


def test_signal_views_shapes_dtype_and_determinism() -> None:
    x = torch.randn(6, 3, 40)
    views = SignalViews(length=32, mean=(0.0, 1.0, 2.0), std=(1.0, 2.0, 3.0))
    a1, b1 = views(x, generator=_gen(1))
    a2, b2 = views(x, generator=_gen(1))
    a3, _ = views(x, generator=_gen(2))
    assert a1.shape == b1.shape == (6, 3, 32) and a1.dtype == torch.float32
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, a3) and not torch.equal(a1, b1)
    assert views(x.double(), generator=_gen(1))[0].dtype == torch.float64


def test_signal_params_differ_per_sample() -> None:
    p = sample_signal_params(SignalViewConfig(channel_drop_p=0.5), 64, 4, 100, generator=_gen())
    for t in (p.crop_start, p.crop_length, p.mask_start, p.mask_length):
        assert t.unique().numel() > 5
    assert p.scale.std() > 0 and p.mask.any() and (~p.mask).any() and p.channel_drop.any()


def test_signal_identity_config_only_standardises() -> None:
    x = torch.randn(5, 2, 30) * 3 + 1
    views = SignalViews(view_a=NO_AUG, view_b=NO_AUG, mean=(1.0,), std=(3.0,))
    a, b = views(x, generator=_gen())
    torch.testing.assert_close(a, (x - 1) / 3)
    torch.testing.assert_close(b, a)


def test_crop_and_resize_reads_the_window() -> None:
    x = torch.arange(20, dtype=torch.float32).view(1, 1, 20).repeat(3, 1, 1)
    p = sample_signal_params(replace(NO_AUG, crop_scale=(0.5, 0.5)), 3, 1, 20, 10, generator=_gen())
    out = apply_signal_view(x, p, 10)
    # half the signal resampled to 10 steps with a 1:1 ratio is exactly the window
    for i in range(3):
        s = int(p.crop_start[i])
        assert int(p.crop_length[i]) == 10
        torch.testing.assert_close(out[i, 0], torch.arange(s, s + 10, dtype=torch.float32))
    p20 = sample_signal_params(replace(NO_AUG, crop_scale=(0.5, 0.5)), 3, 1, 20, 20, generator=_gen())
    assert torch.equal(p20.crop_start, p.crop_start)  # the crop is drawn first
    up = apply_signal_view(x, p20, 20)  # stretched 2x: monotone, starts and ends inside the window
    assert (up.diff(dim=2) >= 0).all()
    assert (up[:, 0, 0] >= p.crop_start).all() and (up[:, 0, -1] <= p.crop_start + 9).all()


def test_time_mask_zeroes_one_window_of_the_configured_length() -> None:
    cfg = replace(NO_AUG, mask_p=1.0, mask_size=(0.1, 0.3))
    x = torch.randn(200, 2, 50).abs() + 1  # no zeros of its own
    out = SignalViews(view_a=cfg, view_b=cfg)(x, generator=_gen())[0]
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])  # all channels
    lengths = zero[:, 0].sum(1)
    assert int(lengths.min()) == 5 and int(lengths.max()) == 15 and lengths.unique().numel() > 5
    idx = torch.arange(50).expand(200, -1)
    first = torch.where(zero[:, 0], idx, 50).min(1).values
    last = torch.where(zero[:, 0], idx, -1).max(1).values
    assert torch.equal(last - first + 1, lengths)  # contiguous
    torch.testing.assert_close(out[~zero], x[~zero])


def test_channel_dropout_zeroes_whole_channels_never_all() -> None:
    cfg = replace(NO_AUG, channel_drop_p=0.5)
    x = torch.randn(300, 3, 16).abs() + 1
    out = SignalViews(view_a=cfg, view_b=cfg)(x, generator=_gen())[0]
    dropped = (out == 0).all(2)
    assert torch.equal((out == 0).any(2), dropped)  # whole channels or nothing
    assert dropped.any() and not dropped.all(1).any()
    assert 0.3 < dropped.float().mean() < 0.5  # p = 0.5, minus the all-dropped rows restored


def test_scaling_and_warp_multiply_and_jitter_adds() -> None:
    x = torch.ones(100, 2, 64)
    scaled = SignalViews(view_a=replace(NO_AUG, scale_std=0.2), view_b=NO_AUG)(x, generator=_gen())[0]
    assert (scaled.std(2) < 1e-6).all() and 0.1 < scaled[:, :, 0].std() < 0.3  # one factor per channel
    warped = SignalViews(view_a=replace(NO_AUG, warp_std=0.2), view_b=NO_AUG)(x, generator=_gen())[0]
    assert (warped.std(2) > 0).all() and (warped.diff(dim=2).abs().max() < 0.1)  # smooth over time
    noisy = SignalViews(view_a=replace(NO_AUG, jitter_std=0.5), view_b=NO_AUG)(x, generator=_gen())[0]
    assert abs(float((noisy - 1).std()) - 0.5) < 0.02


def test_signal_views_bad_input() -> None:
    views = SignalViews()
    with pytest.raises(ValueError, match=r"\(N, C, T\)"):
        views(torch.randn(4, 10))
    with pytest.raises(ValueError, match="float"):
        views(torch.ones(4, 1, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="channels"):
        SignalViews(mean=(0, 0), std=(1, 1))(torch.randn(4, 3, 10))
    with pytest.raises(ValueError, match="probability"):
        SignalViewConfig(mask_p=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        SignalViewConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="unknown signal view"):
        SignalViews(blur_p=0.1)


# ------------------------------------------------------------------------------------------------ table views


def _table(n: int = 50, f: int = 6, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    return torch.randn(n, f, generator=g) * torch.arange(1, f + 1) + 10 * torch.arange(f)


def test_scarf_corruption_replaces_exactly_the_chosen_features_from_their_column() -> None:
    table = _table()
    x = table[:20] + 1000  # values no column of the table holds
    views = TableViews(table, corrupt_rate=0.5)
    p = sample_table_params(views.view_a, 20, 6, 50, generator=_gen())
    assert torch.equal(p.corrupt.sum(1), torch.full((20,), 3))  # floor(0.5 * 6) per row
    out = views.view(x, views.view_a, generator=_gen())
    raw = out * views.std + views.mean
    torch.testing.assert_close(raw[~p.corrupt], x[~p.corrupt])
    for f in range(6):
        rows = p.corrupt[:, f]
        torch.testing.assert_close(raw[rows, f], table[p.source_rows[rows, f], f])
        column = set(table[:, f].tolist())
        assert all(min(abs(v - c) for c in column) < 1e-3 for v in raw[rows, f].tolist())


def test_table_views_per_sample_determinism_and_standardisation() -> None:
    table = _table()
    views = TableViews(table)
    a1, b1 = views(table[:32], generator=_gen(3))
    a2, b2 = views(table[:32], generator=_gen(3))
    assert a1.shape == (32, 6) and a1.dtype == torch.float32
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and not torch.equal(a1, b1)
    p = sample_table_params(views.view_a, 32, 6, 50, generator=_gen())
    assert len({tuple(r) for r in p.corrupt.int().tolist()}) > 5
    clean = TableViews(table, corrupt_rate=0.0)(table, generator=_gen())[0]
    torch.testing.assert_close(clean.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(clean.std(0, unbiased=False), torch.ones(6), atol=1e-5, rtol=0)


def test_table_noise_and_masking() -> None:
    table = _table(200)
    masked = TableViews(table, corrupt_rate=0.0, mask_p=0.3)(table, generator=_gen())[0]
    clean = TableViews(table, corrupt_rate=0.0).standardize(table)
    zero = masked == 0
    assert 0.25 < zero.float().mean() < 0.35
    torch.testing.assert_close(masked[~zero], clean[~zero])
    noisy = TableViews(table, corrupt_rate=0.0, noise_std=0.5)(table, generator=_gen())[0]
    assert abs(float((noisy - clean).std()) - 0.5) < 0.05


def test_table_views_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        TableViews(torch.randn(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        TableViews(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="fitted on 6 features"):
        TableViews(_table())(torch.randn(4, 5))
    with pytest.raises(ValueError, match="fraction"):
        TableViewConfig(corrupt_rate=1.2)


def test_pair_views_apply_each_branch_to_its_side() -> None:
    sig = SignalViews()
    tab = TableViews(_table())
    pv = PairViews(lambda x, g: sig.view(x, sig.view_a, g), lambda x, g: tab.view(x, tab.view_b, g))
    a, b = pv(TensorPair(torch.randn(8, 2, 20), _table()[:8]), generator=_gen())
    assert a.shape == (8, 2, 20) and b.shape == (8, 6)
    with pytest.raises(ValueError, match="same rows"):
        pv(TensorPair(torch.randn(8, 2, 20), _table()[:7]))


# ------------------------------------------------------------------------------------------------ encoders


def test_encoders_shapes_registry_and_gradients() -> None:
    net = build_backbone("resnet1d", in_channels=3, width=4)
    assert isinstance(net, ResNet1d) and net(torch.randn(5, 3, 37)).shape == (5, 8)
    mlp = build_backbone("mlp", in_channels=7, width=16, depth=2)
    assert isinstance(mlp, MLPEncoder) and mlp(torch.randn(5, 7)).shape == (5, 16)
    model = VICReg("resnet1d", "16-16", in_channels=3, backbone_b=mlp, feature_dim_b=16, expander_b="32-16")
    assert model.feature_dim == 128 and model.feature_dim_b == 16  # by name: the default width 64
    z_a, z_b = model(torch.randn(4, 3, 20), torch.randn(4, 7))
    (z_a.sum() + z_b.square().sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="table rows"):
        mlp(torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"\(N, C, T\)"):
        net(torch.randn(5, 37))


# ------------------------------------------------------------------------------------------------ data


def test_float_dataset_loader_and_sources(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(10, 2, 8)).astype(np.float32)
    np.savez(tmp_path / "s.npz", x=x, y=np.arange(10) % 2)
    ds = load_float_rows(tmp_path / "s.npz", kind="signal")
    assert ds.kind == "signal" and ds.channels == 2 and len(ds.mean) == 2 and ds.labels is not None
    with pytest.raises(KeyError, match="x_test"):
        load_float_rows(tmp_path / "s.npz", "test", kind="signal")
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        load_float_rows(tmp_path / "s.npz", kind="table")
    with pytest.raises(ValueError, match="NaN"):
        FloatDataset.from_arrays(np.full((3, 2), np.nan), kind="table")
    loader = InMemoryLoader(TensorPair(torch.arange(10.0)[:, None], torch.arange(10.0)[:, None] * 2), 4, seed=1)
    loader.set_epoch(0)
    batches = [b for b, _ in loader]
    assert len(batches) == 2 and all(torch.equal(b.b, 2 * b.a) for b in batches)
    loader.set_epoch(0, 1)
    assert torch.equal(next(iter(loader))[0].a, batches[1].a)  # resume mid-epoch
    np.savez(tmp_path / "p.npz", x_a=x, x_b=x[:9, 0])
    with pytest.raises(ValueError, match="pair up"):
        load_pairs(tmp_path / "p.npz")
    feats = extract_features(torch.nn.Flatten(), torch.tensor(x), mean=(1.0, 2.0), std=(2.0, 4.0))
    torch.testing.assert_close(feats.view(10, 2, 8)[:, 1], (torch.tensor(x)[:, 1] - 2) / 4)


def test_sklearn_table_split_is_fixed_and_stratified() -> None:
    pytest.importorskip("sklearn")
    train_set = load_float_rows("sklearn:wine", kind="table")
    test_set = load_float_rows("sklearn:wine", "test", kind="table")
    assert train_set.x.shape == (133, 13) and test_set.x.shape == (45, 13) and len(train_set.classes) == 3
    assert torch.equal(train_set.x, load_float_rows("sklearn:wine", kind="table").x)
    assert set(test_set.labels.tolist()) == {0, 1, 2}  # type: ignore[union-attr]


def test_aeon_bundled_set_loads_without_network() -> None:
    pytest.importorskip("aeon")
    train_set = load_float_rows("aeon:GunPoint", kind="signal")
    test_set = load_float_rows("aeon:GunPoint", "test", kind="signal")
    assert train_set.x.shape == (50, 1, 150) and test_set.x.shape == (150, 1, 150)
    assert train_set.classes == ("1", "2") and set(train_set.labels.tolist()) == {0, 1}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not bundled"):
        load_float_rows("aeon:NoSuchSet", kind="signal")


# ------------------------------------------------------------------------------------------------ end to end


def _tiny(tmp_path: Path, data: Path, **overrides) -> TrainConfig:
    cfg = TrainConfig(
        out=tmp_path / "run",
        data=str(data),
        epochs=2,
        batch_size=8,
        device="cpu",
        log_every=1,
        diag_every=2,
        ckpt_every=100,
        progress=False,
        threads=1,  # bit-exact resumes: no thread count chosen by timing
        optim=OptimConfig(name="adamw", base_lr=0.01, warmup_epochs=0.5),
    )
    return replace(cfg, **overrides)


def _signals(n: int, channels: int = 2, length: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.linspace(0, 1, length)
    x = np.sin(2 * np.pi * (2 + 3 * y)[:, None, None] * t) + 0.1 * rng.normal(size=(n, channels, length))
    return x.astype(np.float32), y


def test_tiny_signal_run_via_cli_args(tmp_path: Path) -> None:
    x, y = _signals(32)
    xt, yt = _signals(16, seed=1)
    np.savez(tmp_path / "sig.npz", x=x, y=y, x_test=xt, y_test=yt)
    args = ["--modality", "signal", "--data", str(tmp_path / "sig.npz"), "--out", str(tmp_path / "run")]
    args += ["--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress", "--log-every", "1"]
    args += ["--model.backbone", "resnet1d", "--model.width", "4", "--model.expander", "32-32"]
    args += ["--signal-views.length", "20", "--signal-views.channel-drop-p", "0.3", "--optim.name", "adamw"]
    cfg = parse_train_args(args)
    result = train(cfg)
    assert result.step == 8 and "online_knn.top1" in result.metrics
    state = read_backbone_state(cfg.out / "backbone.safetensors")
    ResNet1d(2, width=4).load_state_dict(state, strict=True)
    assert not (cfg.out / "backbone_b.safetensors").exists()


def test_tiny_table_run_resumes_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    np.savez(tmp_path / "tab.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    model = ModelConfig(backbone="mlp", expander="32-32", width=16, depth=2)
    kw = {"modality": "table", "model": model, "epochs": 3, "batch_size": 16, "log_every": 3}
    full = train(_tiny(tmp_path / "a", tmp_path / "tab.npz", **kw))
    half = _tiny(tmp_path / "b", tmp_path / "tab.npz", **kw)
    train(replace(half, max_steps=3))
    resumed = train(half)
    assert full.step == resumed.step == 6
    a, b = (read_backbone_state(r.run_dir / "backbone.safetensors") for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "online_knn.top1" not in full.metrics  # no test split in the file: no monitor


def test_tiny_two_modality_run_image_and_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 24
    y = np.arange(n) % 2
    images = rng.integers(0, 40, (n, 1, 16, 16), dtype=np.uint8)
    images[y == 1, :, 4:12, 4:12] = 220
    meta = np.stack([y + 0.1 * rng.normal(size=n), rng.normal(size=n), y * 2.0], 1).astype(np.float32)
    np.savez(tmp_path / "pair.npz", x_a=images, x_b=meta, y=y, x_a_test=images[:8], x_b_test=meta[:8], y_test=y[:8])
    args = ["--modality", "image", "--modality-b", "table", "--data", str(tmp_path / "pair.npz")]
    args += ["--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8", "--device", "cpu"]
    args += ["--no-progress", "--views.size", "16", "--model.backbone", "small_cnn", "--model.width", "4"]
    args += ["--model.backbone-b", "mlp", "--model.width-b", "8", "--model.depth", "2", "--model.expander", "32-32"]
    args += ["--model.expander-b", "64-32", "--optim.name", "adamw"]
    cfg = parse_train_args(args)
    result = train(cfg)
    assert result.step == 6 and "online_knn.top1" in result.metrics
    b = read_backbone_state(cfg.out / "backbone_b.safetensors")
    MLPEncoder(3, width=8, depth=2).load_state_dict(b, strict=True)
    assert read_backbone_state(cfg.out / "backbone.safetensors")["features.0.0.weight"].shape[1] == 1


def test_tiny_two_sensor_run(tmp_path: Path) -> None:
    x, y = _signals(16, channels=3)
    np.savez(tmp_path / "sensors.npz", x_a=x, x_b=x[:, :2] * 2, y=y)
    model = ModelConfig(backbone="resnet1d", backbone_b="resnet1d", width=4, expander="32-32")
    cfg = _tiny(tmp_path, tmp_path / "sensors.npz", modality="signal", modality_b="signal", model=model)
    assert train(cfg).step == 4
    assert read_backbone_state(cfg.out / "backbone_b.safetensors")["blocks.0.body.0.weight"].shape[1] == 2


def test_config_errors_for_two_modalities() -> None:
    with pytest.raises(ValueError, match="backbone-b"):
        TrainConfig(modality="image", modality_b="table")
    with pytest.raises(ValueError, match="same width"):
        ModelConfig(expander="32-32", expander_b="32-16")
    with pytest.raises(SystemExit):
        parse_train_args(["--modality", "sound"])
