"""Fuzzed inputs (hypothesis): image files, arrays, labels, configs and embeddings.

Each input gets a result that is valid, or a clear error of a documented type (``ValueError`` for bad
values, ``OSError``/``DecompressionBombError`` for unreadable image files); in a folder, unreadable files
are skipped and reported (the documented skip), never fatal. ``VICREG_RELIABILITY_EXAMPLES`` scales the
number of examples (default 1: CI; e.g. 20 for a soak).
"""

from __future__ import annotations

import dataclasses
import io
import math
import tempfile
import typing
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.helpers import env_int
from vicreg import vicreg_loss
from vicreg.config import TrainConfig, load_config_file, merge
from vicreg.data import ImageDataset, ImageFolderSource, as_uint8_images, decode_image, load
from vicreg.train import train

# PIL warns about the damage it meets in fuzzed files (then decodes or raises)
pytestmark = [pytest.mark.reliability, pytest.mark.filterwarnings("ignore::UserWarning:PIL.*")]

SCALE = env_int("VICREG_RELIABILITY_EXAMPLES", 1)
IMAGE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def _fuzz(n: int) -> settings:
    return settings(
        max_examples=n * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=SCALE == 1
    )


def _encoded(fmt: str, mode: str, w: int, h: int) -> bytes:
    rng = np.random.default_rng(w * 31 + h)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buffer, fmt)
    return buffer.getvalue()


FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
VALID = {fmt: _encoded(fmt, "RGB", 23, 17) for fmt in FORMATS}


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """Random bytes, or a valid file of each format with random byte changes and/or a cut."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    if draw(st.booleans()):
        return FORMATS[fmt], draw(st.binary(max_size=2000))
    data = bytearray(VALID[fmt])
    for at, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=8)):
        data[at] = value
    cut = draw(st.integers(0, len(data)))
    return FORMATS[fmt], bytes(data[:cut] if draw(st.booleans()) else data)


def _decode(path: Path, size: int = 16, min_size: int = 0) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return decode_image(path, size, min_size=min_size)


@_fuzz(300)
@given(image_files())
def test_decode_image_gives_an_image_or_a_documented_error(file: tuple[str, bytes]) -> None:
    suffix, data = file
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(data)
        try:
            image = _decode(path)
        except IMAGE_ERRORS:
            return
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)


@_fuzz(20)
@given(st.lists(image_files(), min_size=1, max_size=6))
def test_folder_source_skips_every_bad_file(files: list[tuple[str, bytes]]) -> None:
    """A folder of fuzzed files plus one good image: every index yields an image; bad files are reported."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "good.png").write_bytes(VALID["PNG"])
        for i, (suffix, data) in enumerate(files):
            (root / f"f{i}{suffix}").write_bytes(data)
        source = ImageFolderSource(root, 16, min_size=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            samples = [source[i] for i in range(len(source))]
        for sample in samples:
            assert sample.image.shape == (3, 16, 16) and sample.image.dtype == torch.uint8
            assert all(reason for _, reason in sample.bad)


@pytest.mark.parametrize(("w", "h"), [(1, 1), (10000, 10), (10, 10000), (1, 5000), (2, 3)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_extreme_image_sizes(tmp_path: Path, w: int, h: int, fmt: str) -> None:
    """Decoded to the asked size when allowed (``min_size=0``); skipped as too small in a folder by default."""
    path = tmp_path / f"x{FORMATS[fmt]}"
    path.write_bytes(_encoded(fmt, "RGB", w, h))
    assert _decode(path).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="smaller than min_size=16"):
        _decode(path, min_size=16)
    (tmp_path / "good.png").write_bytes(VALID["PNG"])
    source = ImageFolderSource(tmp_path, 16)
    bad = [reason for i in range(len(source)) for _, reason in source[i].bad]
    assert bad and all("smaller than min_size" in reason for reason in bad)


# ------------------------------------------------------------------------------------------------ arrays

DTYPES = ["uint8", "int16", "int64", "float16", "float32", "float64", "bool", "complex64", "U1"]
SPECIAL = [0.0, 1.0, 0.5, -1.0, 256.0, math.nan, math.inf, -math.inf, 1e30]


@_fuzz(200)
@given(
    shape=st.one_of(
        st.lists(st.integers(0, 5), min_size=1, max_size=5),
        st.sampled_from([[2, 4, 4], [3, 1, 5, 5], [2, 3, 4, 4], [2, 5, 5, 3], [1, 1, 1], [2, 4, 4, 1]]),
    ),
    dtype=st.sampled_from(DTYPES),
    fill=st.sampled_from(SPECIAL),
    spots=st.integers(0, 3),
    labels=st.one_of(st.none(), st.integers(-2, 7), st.sampled_from(SPECIAL)),
    n_labels=st.integers(-1, 1),
)
def test_arrays_give_a_dataset_or_a_value_error(shape, dtype, fill, spots, labels, n_labels) -> None:
    """Any shape, dtype and values (NaN, inf, out of range), with labels of any count and value."""
    x = np.random.default_rng(0).random(shape)
    flat = x.reshape(-1)
    flat[: min(spots, flat.size)] = fill
    with np.errstate(invalid="ignore", over="ignore"):
        x = x.astype(dtype) if dtype.startswith("float") or dtype == "bool" else (x * 255).astype(dtype)
    y = None
    if labels is not None:
        n = (x.shape[0] if x.ndim else 0) + n_labels
        y = np.full(max(n, 0), labels, dtype=np.float64 if isinstance(labels, float) else np.int64)
    try:
        data = ImageDataset.from_arrays(x, y)
    except ValueError as err:
        assert str(err).startswith("arrays:")
        return
    images = data.images
    assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] in (1, 3)
    assert min(images.shape) >= 1
    if np.issubdtype(x.dtype, np.floating):
        assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    if data.labels is not None:
        assert data.labels.shape == (len(data),) and int(data.labels.min()) >= -1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_images_are_refused(bad: float) -> None:
    x = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    x[2, 3, 4] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite|must lie in \[0, 1\]"):
        as_uint8_images(x)
    with pytest.raises(ValueError, match=r"NaN or infinite|must lie in \[0, 1\]"):
        ImageDataset.from_arrays(torch.from_numpy(x))


def test_label_files_that_do_not_match(tmp_path: Path) -> None:
    images = np.zeros((6, 8, 8), np.uint8)
    cases = {
        "fewer": (np.arange(5), "6 images but 5 labels"),
        "more": (np.arange(7), "6 images but 7 labels"),
        "2-d": (np.zeros((6, 2)), "6 images but 12 labels"),
        "fractional": (np.full(6, 0.5), "must be integers"),
        "nan": (np.full(6, np.nan), "must be integers"),
        "inf": (np.full(6, np.inf), "class indices"),
        "negative": (np.full(6, -3), "class indices"),
        "strings": (np.array(["a"] * 6), "labels must be numbers"),
    }
    for name, (labels, match) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=images, labels=labels)
        with pytest.raises(ValueError, match=match):
            load(path)
    # an MNIST-format folder whose label file holds another count
    folder = tmp_path / "idx"
    folder.mkdir()
    _idx(folder / "train-images-idx3-ubyte", np.zeros((6, 8, 8), np.uint8))
    _idx(folder / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="5,\\) labels for 6 images"):
        load(folder)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01garbage")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load(folder)


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def test_training_on_extreme_array_sizes(tmp_path: Path) -> None:
    """10000 x 10 images train (the views crop and resize them); constant 1 x 1 images are refused clearly."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tall.npz", images=rng.integers(0, 255, (16, 10000, 10), dtype=np.uint8))
    cfg = TrainConfig(
        out=tmp_path / "run", data=str(tmp_path / "tall.npz"), epochs=1, max_steps=1, batch_size=8,
        device="cpu", knn_every=0, progress=False,
    )  # fmt: skip
    cfg = merge(cfg, {"views": {"size": 16}, "model": {"backbone": "small_cnn", "width": 4, "expander": "16-16"}})
    assert train(cfg).step == 1
    np.savez(tmp_path / "dots.npz", images=np.full((16, 1, 1), 7, np.uint8))
    with pytest.raises(ValueError, match="constant channel"):
        train(dataclasses.replace(cfg, data=str(tmp_path / "dots.npz"), out=tmp_path / "run2"))


# ------------------------------------------------------------------------------------------------ configs


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


KEYS = _leaf_keys(TrainConfig)
VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 7, 2**31, 2**32, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1e-300, -1e-9, 1.5, math.nan, math.inf]),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", "8192-abc", "32-32", "lars", "sgd", "bf16", "cpu", "0", "-1", "1e9"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _nest(key: str, value: Any) -> dict[str, Any]:
    section, _, name = key.partition(".")
    return {section: {name: value}} if name else {key: value}


@_fuzz(400)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_config_values_give_a_valid_config_or_a_value_error(changes: list[tuple[str, Any]]) -> None:
    cfg = TrainConfig()
    for key, value in changes:
        try:
            cfg = merge(cfg, _nest(key, value))
        except ValueError as err:
            assert key.split(".")[-1] in str(err) or "expander" in str(err), (key, value, str(err))
            continue
    # whatever was accepted is a valid config: rebuilding it runs every check again
    rebuilt = merge(TrainConfig(), dataclasses.asdict(cfg))
    assert rebuilt == cfg
    assert 0 <= cfg.seed < 2**32 and cfg.batch_size >= 2 and cfg.epochs >= 1


@_fuzz(60)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_config_files_give_a_valid_config_or_a_value_error(changes: list[tuple[str, Any]]) -> None:
    data: dict[str, Any] = {}
    for key, value in changes:
        for section, inner in _nest(key, value).items():
            data[section] = {**data[section], **inner} if isinstance(inner, dict) and section in data else inner
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        try:
            load_config_file(path)
        except ValueError as err:
            assert "config" in str(err) or any(k.split(".")[-1] in str(err) for k, _ in changes), str(err)


# ------------------------------------------------------------------------------------------------ the loss


@_fuzz(300)
@given(
    shape_a=st.lists(st.integers(0, 9), min_size=1, max_size=3),
    same=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64]),
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e3, 1e6]),
    poison=st.sampled_from([None, math.nan, math.inf, -math.inf]),
    seed=st.integers(0, 1000),
)
def test_loss_on_random_shapes_and_values(shape_a, same, dtype, scale, poison, seed) -> None:
    """A finite loss (|z| <= 1e6, D, N < 10) or a ValueError naming the problem; never NaN from good input."""
    g = torch.Generator().manual_seed(seed)
    z_a = (torch.randn(shape_a, generator=g, dtype=torch.float64) * scale).to(dtype)
    z_b = z_a.clone() if same else (torch.randn(shape_a, generator=g, dtype=torch.float64) * scale).to(dtype)
    if poison is not None and z_a.numel() and dtype.is_floating_point:
        z_b.view(-1)[0] = poison
    try:
        out = vicreg_loss(z_a, z_b)
    except ValueError as err:
        assert "z_a" in str(err) or "z_b" in str(err)
        assert (
            poison is not None or z_a.ndim != 2 or min(z_a.shape) < 1 or z_a.shape[0] < 2 or not dtype.is_floating_point
        )
        return
    assert poison is None or not dtype.is_floating_point
    expected = torch.float64 if dtype == torch.float64 else torch.float32  # statistics never in half precision
    for term in out:
        assert term.dtype == expected and torch.isfinite(term), (out, shape_a, dtype, scale)
