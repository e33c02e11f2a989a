"""Multi-band and 16-bit images through the real CLI: a 13-band uint16 TIFF folder and a 16-bit DICOM folder each
train, evaluate, embed, export (safetensors, hf, onnx), report and show neighbours; the per-band statistics
round-trip through export; values above 255 are never clipped or wrapped. One tiny trained run per kind is
shared by the module's tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import run_cli
from vicreg import load_backbone
from vicreg.build import load_encoder, run_data_kind
from vicreg.checkpoint import read_backbone_spec
from vicreg.config import TrainConfig
from vicreg.data.bands import band_format, band_stats, read_bands
from vicreg.distributed import DistInfo

tifffile = pytest.importorskip("tifffile")
pydicom = pytest.importorskip("pydicom")

CLASSES, PER_CLASS, SIDE = 3, 8, 20


def _spectra(rng: np.random.Generator, label: int, bands: int) -> np.ndarray:
    """One image whose spectrum says its class: a bright band outside the first three (not in "RGB")."""
    base = np.full((bands, 1, 1), 30000.0)
    base[bands - 1 - label] += 30000.0  # up to ~60000: far above 255
    x = base + rng.normal(0, 2000, (bands, SIDE, SIDE))
    x = np.clip(x, 0, 65535).astype(np.uint16)
    x[:, 0, 0] = 65535  # saturated corner pixels: the largest 16-bit value
    return x


def tiff_folder(root: Path, bands: int = 13) -> Path:
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(PER_CLASS):
            tifffile.imwrite(root / f"class{c}" / f"{i:02d}.tif", _spectra(rng, c, bands))
    return root


def dicom_folder(root: Path) -> Path:
    """CT-like 16-bit slices written with pydicom's own writer (stored uint16, rescaled to Hounsfield units)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(1)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(PER_CLASS + 4):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(str(root / f"class{c}" / f"{i:02d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
            ds.Rows = ds.Columns = SIDE
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            yy, xx = np.mgrid[:SIDE, :SIDE]
            blob = ((yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 < (4 + 4 * c) ** 2) * 2500.0
            x = np.clip(1024 + blob + rng.normal(0, 100, (SIDE, SIDE)), 0, 65535).astype(np.uint16)
            x[0, 0] = 65535
            ds.PixelData = x.tobytes()
            ds.save_as(root / f"class{c}" / f"{i:02d}.dcm", enforce_file_format=True)
    return root


def _train(data: Path, out: Path, *extra: str) -> None:
    got = run_cli(
        "train", "--data", data, "--out", out, "--device", "cpu", "--batch-size", "8", "--epochs", "2",
        "--model.backbone", "small_cnn", "--model.width", "4", "--model.expander", "32-32",
        "--band-views.size", "16", "--log-every", "1", "--optim.warmup-epochs", "1", "--knn-every", "1", *extra,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    return got


@pytest.fixture(scope="module")
def tiff_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("tiff")
    data = tiff_folder(root / "data")
    got = _train(data, root / "run", "--band-views.rgb-bands", "3", "2", "1")
    return data, root / "run", got.stdout + got.stderr


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("dicom")
    data = dicom_folder(root / "data")
    got = _train(data, root / "run", "--window", "500,3000")
    return data, root / "run", got.stdout + got.stderr


def test_sources_are_recognised(tmp_path: Path) -> None:
    np.save(tmp_path / "u16.npy", np.zeros((2, 3, 4, 4), np.uint16))
    np.save(tmp_path / "u8.npy", np.zeros((2, 3, 4, 4), np.uint8))
    np.savez(tmp_path / "bands.npz", images=np.zeros((2, 13, 4, 4), np.uint8))
    np.save(tmp_path / "float01.npy", np.full((2, 4, 4, 3), 0.5, np.float32))
    np.save(tmp_path / "float.npy", np.full((2, 1, 4, 4), 7.0, np.float32))
    assert band_format(tmp_path / "u16.npy") == "arrays"
    assert band_format(tmp_path / "bands.npz") == "arrays"
    assert band_format(tmp_path / "float.npy") == "arrays"
    assert band_format(tmp_path / "u8.npy") is None  # 8-bit RGB keeps the image path
    assert band_format(tmp_path / "float01.npy") is None
    (tmp_path / "rgb").mkdir()
    tifffile.imwrite(tmp_path / "rgb" / "a.tif", np.zeros((4, 4, 3), np.uint8), photometric="rgb")
    assert band_format(tmp_path / "rgb") is None
    assert band_format(tiff_folder(tmp_path / "t", bands=2)) == "tiff"


def test_tiff_run_header_and_checkpoint(tiff_run: tuple[Path, Path, str]) -> None:
    data, run, log = tiff_run
    assert "13x20x20" in log and "band views, recipe multispectral (auto)" in log and "uint16" in log
    enc = load_encoder(run)
    assert enc.channels == 13 and enc.spec.input_shape == (13, 16, 16)
    want = band_stats(read_bands(data).images)  # the training split's statistics, 1st-99th percentiles
    assert enc.band_stats == want
    assert enc.spec.mean == want.mean and enc.spec.std == want.std
    assert max(want.high) > 50000  # statistics in raw 16-bit units, not scaled to 8 bits


def test_values_above_255_reach_the_views_unchanged(tiff_run: tuple[Path, Path, str]) -> None:
    data, run, _ = tiff_run
    cfg = load_encoder(run).config
    training = run_data_kind(cfg).training_data(cfg, DistInfo(), torch.device("cpu"))
    training.loader.set_epoch(0)
    batch, _ = next(iter(training.loader))
    assert batch.dtype == torch.uint16 and int(batch.to(torch.int32).max()) == 65535
    raw = torch.from_numpy(np.stack([tifffile.imread(p) for p in sorted(data.rglob("*.tif"))]).astype(np.int32))
    assert torch.equal(read_bands(data).images.to(torch.int32), raw)  # nothing clipped, scaled or wrapped


def test_tiff_eval_embed_and_features_match_a_hand_normalisation(tiff_run: tuple[Path, Path, str]) -> None:
    data, run, _ = tiff_run
    got = run_cli("eval", run, "--device", "cpu")
    assert got.returncode == 0, got.stderr
    report = json.loads((run / "eval.json").read_text())
    assert report["data"]["input_shape"] == [13, 16, 16]
    out = run / "emb.npz"
    got = run_cli("embed", run, "--out", out, "--device", "cpu")
    assert got.returncode == 0, got.stderr
    emb = np.load(out)
    assert emb["embeddings"].shape[0] == CLASSES * PER_CLASS
    # the encoder applied to the raw 16-bit values, normalised by hand: no clipping, wrapping or 8-bit scaling
    enc = load_encoder(run)
    x = read_bands(data).resized(16).images.to(torch.float32)
    mean, std = torch.tensor(enc.spec.mean).view(1, -1, 1, 1), torch.tensor(enc.spec.std).view(1, -1, 1, 1)
    with torch.no_grad():
        want = enc.model.embed((x - mean) / std)
    np.testing.assert_allclose(emb["embeddings"], want.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_tiff_exports_carry_the_band_statistics(tiff_run: tuple[Path, Path, str]) -> None:
    _, run, _ = tiff_run
    enc = load_encoder(run)
    for name, fmt in (("b.safetensors", "safetensors"), ("hf", "hf"), ("b.onnx", "onnx")):
        got = run_cli("export", run, "--out", run / name, "--format", fmt)
        assert got.returncode == 0, got.stderr
    spec = read_backbone_spec(run / "b.safetensors")
    assert spec is not None and spec.mean == enc.spec.mean and spec.std == enc.spec.std
    assert spec.in_channels == 13
    hf = json.loads((run / "hf" / "config.json").read_text())
    assert hf["pretrained_cfg"]["mean"] == list(enc.spec.mean)
    x = torch.randn(2, 13, 16, 16)
    with torch.no_grad():
        want = enc.model.backbone(x)
        for path in (run / "b.safetensors", run / "hf"):
            torch.testing.assert_close(load_backbone(path).eval()(x), want)


@pytest.mark.slow
def test_tiff_report_and_neighbors_draw_chosen_bands(tiff_run: tuple[Path, Path, str]) -> None:
    _, run, _ = tiff_run
    got = run_cli("neighbors", run, "--out", run / "nb.png", "--device", "cpu", "--bands", "12", "11", "10")
    assert got.returncode == 0, got.stderr
    assert (run / "nb.png").stat().st_size > 0 and (run / "nb.csv").is_file()
    got = run_cli("neighbors", run, "--out", run / "nb1.png", "--device", "cpu", "--bands", "0", "--duplicates", "0.99")
    assert got.returncode == 0, got.stderr
    got = run_cli("neighbors", run, "--out", run / "bad.png", "--device", "cpu", "--bands", "13")
    assert got.returncode != 0 and "band indices in [0, 13)" in got.stderr
    got = run_cli("report", run, "--device", "cpu", "--bands", "3", "2", "1")
    assert got.returncode == 0, got.stderr
    md = (run / "report.md").read_text()
    assert "report/neighbors.png" in md and "skipped" not in md


def test_pictures_stretch_each_band_by_its_training_range(tiff_run: tuple[Path, Path, str]) -> None:
    data, run, _ = tiff_run
    enc = load_encoder(run)
    rows = read_bands(data).images[:4]
    pics = enc.pictures(rows, (12, 11, 10))
    assert pics.dtype == torch.uint8 and pics.shape == (4, 3, SIDE, SIDE)
    assert int(pics[:, :, 0, 0].min()) == 255  # the saturated corner: above the 99th percentile
    assert enc.pictures(rows[:, :1].expand(-1, 1, -1, -1), (0,)).shape == (4, 1, SIDE, SIDE)


@pytest.mark.slow
def test_dicom_folder_end_to_end(dicom_run: tuple[Path, Path, str]) -> None:
    data, run, log = dicom_run
    assert "recipe greyscale16 (auto)" in log and "DICOM window 500,3000" in log
    enc = load_encoder(run)
    assert enc.channels == 1 and enc.data_kind["window"] == "500,3000"
    images = read_bands(data).images  # Hounsfield units without the window: -1024 .. 64511 do not fit int16
    assert images.dtype == torch.float32 and float(images.max()) == 65535 - 1024
    stats = enc.band_stats
    assert stats is not None and stats.high[0] <= 2000  # the training statistics saw the windowed values
    for args in (
        ("eval", run, "--device", "cpu"),
        ("embed", run, "--out", run / "emb.npy", "--device", "cpu"),
        ("export", run, "--out", run / "b.safetensors"),
        ("export", run, "--out", run / "hf", "--format", "hf"),
        ("export", run, "--out", run / "b.onnx"),
        ("neighbors", run, "--out", run / "nb.png", "--device", "cpu"),
        ("report", run, "--device", "cpu"),
    ):
        got = run_cli(*args)
        assert got.returncode == 0, (args, got.stderr)
    assert np.load(run / "emb.npy").shape[0] == 2 * (PER_CLASS + 4)
    spec = read_backbone_spec(run / "b.safetensors")
    assert spec is not None and spec.mean == enc.spec.mean and spec.std == enc.spec.std
    md = (run / "report.md").read_text()
    assert "report/neighbors.png" in md and "skipped" not in md


def test_uint16_npy_trains_with_band_percentiles_from_the_config(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(1000, 60000, (16, 4, 12, 12), dtype=np.uint16)
    np.save(tmp_path / "x.npy", x)
    cfg = TrainConfig(data=str(tmp_path / "x.npy"), band_percentiles=(0.0, 100.0), batch_size=8)
    training = run_data_kind(cfg).training_data(cfg, DistInfo(), torch.device("cpu"))
    want = band_stats(torch.from_numpy(x), percentiles=(0.0, 100.0))
    assert training.meta["band_stats"] == want.to_dict()
    assert training.inputs[0].shape == (4, 64, 64) and training.inputs[0].mean == want.mean
