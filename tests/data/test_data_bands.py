"""Multi-band and high-bit-depth images (vicreg.data.bands): readers, statistics and normalisation.

The files are written inside each test with the libraries' own writers (numpy, tifffile, pydicom); one DICOM
file that pydicom ships (CT_small.dcm) checks the reader on a real scanner's file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vicreg.data import InMemoryLoader
from vicreg.data.arrays import ArrayDataset, channel_stats
from vicreg.data.bands import (
    BandImages,
    BandStats,
    as_band_images,
    band_stats,
    normalize_bands,
    read_band_arrays,
    read_dicom_folder,
    read_tiff_folder,
    to_unit,
)
from vicreg.models import EncoderSpec
from vicreg.probes.features import extract_features, normalize_rows

tifffile = pytest.importorskip("tifffile")
pydicom = pytest.importorskip("pydicom")


def _uint16_bands(n: int = 6, c: int = 13, size: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4000, (n, c, size, size), dtype=np.uint16)
    x[0, 0, 0, 0], x[0, 0, 0, 1], x[1, c - 1, 3, 3] = 65535, 65534, 65533  # values that 8 bits would clip
    return x


# ------------------------------------------------------------------------------------------------- arrays


def test_as_band_images_keeps_compact_dtypes_and_exact_values() -> None:
    x = _uint16_bands()
    t = as_band_images(x)
    assert t.dtype == torch.uint16 and t.shape == x.shape and t.is_contiguous()
    assert np.array_equal(t.numpy(), x)
    assert as_band_images(np.zeros((2, 4, 4), np.uint8)).shape == (2, 1, 4, 4)  # (N, H, W): one band
    assert as_band_images(np.full((1, 2, 2, 2), 300, np.int64)).dtype == torch.uint16
    assert as_band_images(np.full((1, 2, 2, 2), -1000, np.int32)).dtype == torch.int16
    assert as_band_images(np.full((1, 2, 2, 2), 7, np.int32)).dtype == torch.uint8
    assert as_band_images(np.ones((1, 2, 2, 2), np.float64)).dtype == torch.float32
    assert as_band_images(np.zeros((1, 2, 2, 2), ">u2")).dtype == torch.uint16  # big-endian, as in some TIFFs


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((1, 2, 2, 2), np.nan, np.float32), "NaN or infinite"),
        (np.full((1, 2, 2, 2), 70000, np.int64), "fit neither uint16 nor int16"),
        (np.zeros((1, 2, 2, 2), bool), "not supported"),
        (np.zeros((2, 2), np.uint8), "(N, C, H, W)"),
        (np.zeros((1, 0, 2, 2), np.uint8), "(N, C, H, W)"),
    ],
)
def test_as_band_images_refuses_with_one_line(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        as_band_images(array)
    assert "\n" not in str(err.value)


def test_read_band_arrays_npz_splits_labels_and_npy(tmp_path: Path) -> None:
    x, x_test = _uint16_bands(6), _uint16_bands(4, seed=1)
    np.savez(tmp_path / "s2.npz", images=x, labels=np.arange(6) % 3, images_test=x_test, labels_test=[0, 1, 2, 0])
    train = read_band_arrays(tmp_path / "s2.npz")
    test = read_band_arrays(tmp_path / "s2.npz", split="test")
    assert train.images.dtype == torch.uint16 and train.channels == 13 and len(train) == 6
    assert int(train.images[0, 0, 0, 0].to(torch.int32)) == 65535
    assert train.labels is not None and train.labels.tolist() == [0, 1, 2, 0, 1, 2] and train.classes == ("0", "1", "2")
    assert test.labels is not None and len(test) == 4
    np.save(tmp_path / "f.npy", np.random.default_rng(0).random((3, 5, 4, 4), dtype=np.float32))
    assert read_band_arrays(tmp_path / "f.npy").images.dtype == torch.float32
    (tmp_path / "bad.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"not a readable \.npy/\.npz file .*text"):
        read_band_arrays(tmp_path / "bad.npz")
    np.savez(tmp_path / "nokey.npz", a=x, b=x)
    with pytest.raises(ValueError, match="name them 'images'"):
        read_band_arrays(tmp_path / "nokey.npz")


def test_uint8_arrays_error_points_to_the_16_bit_reader() -> None:
    with pytest.raises(ValueError, match=r"vicreg\.data\.bands\.read_band_arrays"):
        ArrayDataset.from_arrays(np.full((1, 1, 2, 2), 4095, np.uint16))


def test_in_memory_loader_batches_stay_uint16(tmp_path: Path) -> None:
    data = BandImages(as_band_images(_uint16_bands(8)), torch.arange(8) % 2)
    loader = InMemoryLoader(data.images, 4, labels=data.labels, shuffle=True, seed=0, rank=0, world_size=1)
    batches = [x for x, _ in loader]
    assert all(b.dtype == torch.uint16 and b.shape == (4, 13, 8, 8) for b in batches)
    assert sorted(int(b.to(torch.int32).max()) for b in batches)[-1] == 65535


def test_band_images_select_resize_subset() -> None:
    data = BandImages(as_band_images(_uint16_bands(4, size=16)), torch.tensor([0, 1, 0, 1]), ("a", "b"))
    rgb = data.select_bands((3, 2, 1))
    assert rgb.channels == 3 and torch.equal(rgb.images[:, 0], data.images[:, 3])
    small = data.resized(8)
    assert small.images.dtype == torch.uint16 and small.image_size == (8, 8)
    assert data.subset([1, 3]).labels.tolist() == [1, 1]  # type: ignore[union-attr]
    full = BandImages(torch.full((1, 1, 16, 16), 65535, dtype=torch.uint16)).resized(7)
    assert bool((full.images.to(torch.int32) == 65535).all())  # no wrap after rounding
    with pytest.raises(ValueError, match="band indices"):
        data.select_bands((13,))
    with pytest.raises(ValueError, match="uint8, uint16, int16 or float32"):
        BandImages(torch.zeros(1, 2, 2, 2, dtype=torch.int64))


# ------------------------------------------------------------------------------------------------- TIFF


def test_tiff_folder_axis_rule_and_labels(tmp_path: Path) -> None:
    x = _uint16_bands(4, c=13)
    for i, cls in enumerate(["forest", "forest", "water", "water"]):
        (tmp_path / "pages" / cls).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "pages" / cls / f"{i}.tif", x[i], photometric="minisblack")  # (C, H, W): 13 pages
    data = read_tiff_folder(tmp_path / "pages")
    assert data.images.dtype == torch.uint16 and data.images.shape == (4, 13, 8, 8)
    assert np.array_equal(data.images.numpy(), x)  # 65535 kept, nothing scaled
    assert data.classes == ("forest", "water") and data.labels is not None and data.labels.tolist() == [0, 0, 1, 1]

    rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "rgb").mkdir()
    for i in range(2):  # interleaved samples (H, W, C): bands last in the file
        tifffile.imwrite(tmp_path / "rgb" / f"{i}.tiff", rgb[i], photometric="rgb")
    got = read_tiff_folder(tmp_path / "rgb")
    assert got.labels is None and np.array_equal(got.images.numpy(), rgb.transpose(0, 3, 1, 2))

    (tmp_path / "planar").mkdir()  # planar samples (C, H, W) and a single page (H, W)
    tifffile.imwrite(
        tmp_path / "planar" / "a.tif", rgb[0].transpose(2, 0, 1), photometric="rgb", planarconfig="separate"
    )
    assert np.array_equal(read_tiff_folder(tmp_path / "planar").images[0].numpy(), rgb[0].transpose(2, 0, 1))
    (tmp_path / "grey").mkdir()
    tifffile.imwrite(tmp_path / "grey" / "a.tif", x[0, 0])
    assert read_tiff_folder(tmp_path / "grey").images.shape == (1, 1, 8, 8)


def test_tiff_folder_sizes_dtypes_and_errors(tmp_path: Path) -> None:
    (tmp_path / "mixed").mkdir()
    tifffile.imwrite(tmp_path / "mixed" / "a.tif", np.zeros((4, 8, 8), np.uint16), photometric="minisblack")
    tifffile.imwrite(tmp_path / "mixed" / "b.tif", np.zeros((4, 10, 12), np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match="pass size= to resize"):
        read_tiff_folder(tmp_path / "mixed")
    resized = read_tiff_folder(tmp_path / "mixed", size=6)
    assert resized.images.shape == (2, 4, 6, 6) and resized.images.dtype == torch.uint16
    tifffile.imwrite(tmp_path / "mixed" / "c.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match="one bit depth"):
        read_tiff_folder(tmp_path / "mixed", size=6)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="not a readable TIFF"):
        read_tiff_folder(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.tif/\.tiff files"):
        read_tiff_folder(tmp_path / "empty")
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((2, 3, 8, 8), np.uint16), photometric="minisblack")
    (tmp_path / "stack").mkdir()
    (tmp_path / "t.tif").rename(tmp_path / "stack" / "t.tif")
    with pytest.raises(ValueError, match="cannot read a TIFF image with axes"):
        read_tiff_folder(tmp_path / "stack")


@pytest.mark.parametrize(("reader", "module"), [(read_tiff_folder, "tifffile"), (read_dicom_folder, "pydicom")])
def test_missing_optional_reader_names_the_extra(
    reader: object, module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'vicreg\[multiband\]'") as err:
        reader(tmp_path)  # type: ignore[operator]
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------- DICOM


def _write_dicom(
    path: Path, pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0, **extra: object
) -> None:
    """A minimal secondary-capture DICOM file written by pydicom itself."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_full_16_bit_range_is_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 65536, (3, 8, 8), dtype=np.uint16)
    images[0, 0, :3] = (65535, 65534, 0)
    for i, cls in enumerate(["a", "a", "b"]):
        (tmp_path / cls).mkdir(exist_ok=True)
        _write_dicom(tmp_path / cls / f"{i}.dcm", images[i])
    data = read_dicom_folder(tmp_path)
    assert data.images.dtype == torch.uint16 and data.images.shape == (3, 1, 8, 8)
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert data.classes == ("a", "b") and data.labels is not None and data.labels.tolist() == [0, 0, 1]


def test_dicom_rescale_window_and_dtype(tmp_path: Path) -> None:
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 60  # 0 .. 3780
    _write_dicom(tmp_path / "ct.dcm", stored, slope=1.0, intercept=-1024.0, WindowCenter=40, WindowWidth=400)
    hu = stored.astype(np.int32) - 1024
    data = read_dicom_folder(tmp_path)
    assert data.images.dtype == torch.int16 and np.array_equal(data.images[0, 0].numpy(), hu)
    windowed = read_dicom_folder(tmp_path, window=(40, 400))
    assert np.array_equal(windowed.images[0, 0].numpy(), np.clip(hu, -160, 240))
    assert torch.equal(read_dicom_folder(tmp_path, window="file").images, windowed.images)
    _write_dicom(tmp_path / "ct.dcm", stored, slope=0.5, intercept=0.25)
    half = read_dicom_folder(tmp_path)
    assert half.images.dtype == torch.float32 and np.allclose(half.images[0, 0].numpy(), stored * 0.5 + 0.25)
    with pytest.raises(ValueError, match="no WindowCenter"):
        read_dicom_folder(tmp_path, window="file")
    with pytest.raises(ValueError, match="window must be"):
        read_dicom_folder(tmp_path, window=(1.0,))  # type: ignore[arg-type]
    (tmp_path / "junk.dcm").write_text("not dicom")
    with pytest.raises(ValueError, match=r"junk\.dcm: cannot read its DICOM pixels"):
        read_dicom_folder(tmp_path)


def test_dicom_file_shipped_with_pydicom(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    if src is None:
        pytest.skip("pydicom's test files are not installed")
    (tmp_path / "scan").write_bytes(Path(src).read_bytes())  # no suffix: found by its DICM marker
    data = read_dicom_folder(tmp_path)
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert data.images.shape == (1, 1, *ds.pixel_array.shape)
    assert np.array_equal(data.images[0, 0].numpy().astype(np.float64), expected)


# ------------------------------------------------------------------------------------------------- statistics


def test_band_stats_are_robust_to_saturated_pixels() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1000, 100, (20, 2, 16, 16)).clip(0, 65535).astype(np.uint16)
    spoiled = x.copy()
    band0 = spoiled[:, 0]
    band0[np.arange(band0.size).reshape(band0.shape) % 200 == 0] = 65535  # 0.5% saturated pixels in band 0
    spoiled[:, 0] = band0
    clean, robust = band_stats(torch.from_numpy(x)), band_stats(torch.from_numpy(spoiled))
    plain = band_stats(torch.from_numpy(spoiled), percentiles=(0, 100))
    assert abs(robust.mean[0] - clean.mean[0]) < 10 and robust.std[0] < 1.2 * clean.std[0]
    assert plain.std[0] > 20 * clean.std[0]  # what the robust statistics avoid
    assert robust.high[0] < 2000 and plain.high[0] == 65535.0
    assert robust.mean[1] == clean.mean[1]  # bands are independent


def test_band_stats_without_clipping_match_numpy_and_uint8_channel_stats() -> None:
    x = _uint16_bands(5, c=3)
    s = band_stats(torch.from_numpy(x), percentiles=(0, 100))
    v = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.allclose(s.mean, v.mean(1), rtol=1e-12) and np.allclose(s.std, v.std(1), rtol=1e-9)
    assert s.low == tuple(v.min(1)) and s.high == tuple(v.max(1))
    u8 = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (7, 3, 9, 9), dtype=np.uint8))
    mean, std = channel_stats(u8)
    s8 = band_stats(u8, percentiles=(0, 100))
    assert np.allclose(s8.mean, mean, atol=1e-12) and np.allclose(s8.std, std, atol=1e-9)


def test_band_stats_subsample_and_constant_band() -> None:
    x = torch.zeros(4, 2, 64, 64, dtype=torch.uint16)
    x[:, 1] = torch.arange(64 * 64).view(64, 64).to(torch.uint16)
    s = band_stats(x, max_samples=1000)
    assert s.std[0] == 1.0 and s.low[0] == s.high[0] == 0.0  # constant band: defined normalisation
    assert abs(s.low[1] - 0.01 * 4095) < 10 and abs(s.high[1] - 0.99 * 4095) < 10
    assert band_stats(x, max_samples=1000) == s  # deterministic
    with pytest.raises(ValueError, match="percentiles"):
        band_stats(x, percentiles=(50, 10))


def test_stats_round_trip_through_the_encoder_spec() -> None:
    stats = band_stats(torch.from_numpy(_uint16_bands()))
    assert BandStats.from_dict(stats.to_dict()) == stats
    spec = EncoderSpec("small_cnn", {"in_channels": 13}, 256, "image", (13, 8, 8), stats.mean, stats.std)
    back = EncoderSpec.from_dict(spec.to_dict())
    assert back.mean == stats.mean and back.std == stats.std and back.in_channels == 13


# ------------------------------------------------------------------------------------------------- normalisation


def test_uint16_to_float_is_exact_near_65535() -> None:
    x = torch.tensor([0, 1, 255, 256, 4095, 65533, 65534, 65535], dtype=torch.uint16).view(1, 1, 2, 4)
    assert to_unit(x).view(-1).tolist() == [0.0, 1.0, 255.0, 256.0, 4095.0, 65533.0, 65534.0, 65535.0]
    z = normalize_bands(x, (0.0,), (1.0,))
    assert z.dtype == torch.float32 and z.view(-1).tolist()[-3:] == [65533.0, 65534.0, 65535.0]
    z = normalize_bands(x, (32768.0,), (10.0,))
    expected = (np.array([0, 1, 255, 256, 4095, 65533, 65534, 65535], np.float64) - 32768) / 10
    assert np.allclose(z.view(-1).numpy(), expected, rtol=0, atol=1e-3)
    assert len(set(z.view(-1).tolist())) == 8  # neighbours near the top stay distinct (no clip, no wrap)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.int16, torch.float32])
def test_normalize_bands_is_what_evaluation_applies(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 5, 6, 6, generator=gen) * (200 if dtype == torch.uint8 else 3000)).to(dtype)
    stats = band_stats(x)
    ours = normalize_bands(x, stats.mean, stats.std)
    assert torch.equal(ours, normalize_rows(x, stats.mean, stats.std, "cpu"))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5 * 36, 3))
    feats = extract_features(net, x, batch_size=3, device="cpu", mean=stats.mean, std=stats.std)
    assert torch.allclose(feats, net(ours), atol=1e-5)
