"""Odd files and inputs (issue 26, point 5): link loops in image folders, array files cut short or claiming
impossible sizes, damaged archives, tables with text columns, errors inside loader workers, pipes and devices
given as data. Each gets one line (or, for one unreadable file among many, the usual skip warning)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npformat
from PIL import Image

from tests.helpers import run_cli
from vicreg.data import BadImageError, BadImageWarning, folder_loader, load, load_arrays, scan_folder
from vicreg.data.numpy_files import check_numpy_file
from vicreg.paths import expect_file, expect_folder, path_kind

pytestmark = pytest.mark.reliability


def _pngs(folder: Path, n: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ------------------------------------------------------------------------------------------------ folder scans


def test_a_directory_link_loop_does_not_multiply_the_data(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _pngs(root / "2024", 32)
    (root / "2024" / "up").symlink_to("..")  # photos/2024/up -> photos: a loop
    (root / "again").symlink_to("2024")  # a second way to the same folder
    files, labels, classes = scan_folder(root, labeled=False)
    assert len(files) == 32 and labels is None
    files, labels, classes = scan_folder(root)  # auto: class sub-folders; the link to 2024 is not a second class
    assert len(files) == 32 and classes == ("2024",) and set(labels or []) == {0}


def test_labelled_classes_reach_through_links_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _pngs(store / "cats", 3)
    _pngs(store / "dogs", 2, start=10)
    root = tmp_path / "root"
    root.mkdir()
    (root / "cats").symlink_to(store / "cats")
    (root / "dogs").symlink_to(store / "dogs")
    (root / "cats" / "loop").symlink_to(root)  # back to the top: not read again
    files, labels, classes = scan_folder(root)
    assert classes == ("cats", "dogs") and labels == [0, 0, 0, 1, 1] and len(files) == 5


def test_a_file_link_that_loops_is_skipped_like_an_unreadable_file(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _pngs(root, 8)
    (root / "zz_loop.png").symlink_to("zz_loop.png")
    (root / "sub").mkdir()
    _pngs(root / "sub", 8, start=100)
    assert len(scan_folder(root, labeled=False)[0]) == 17
    assert path_kind(root / "zz_loop.png") == "a link that loops"
    loader = folder_loader(root, 16, 17, labeled=False, num_workers=0, shuffle=False, drop_last=False)
    with pytest.warns(BadImageWarning, match=r"skipped 1 unusable image file.*zz_loop\.png"):
        images = [x for x, _ in loader]
    assert sum(x.shape[0] for x in images) == 17
    # auto-labelled scan: a looping link directly in the root does not stop the scan either
    with pytest.warns(UserWarning, match=r"8 image file\(s\) directly in .* are ignored"):
        files, _, classes = scan_folder(root)
    assert classes == ("sub",) and len(files) == 8


def test_errors_inside_workers_are_the_same_one_line_as_without(tmp_path: Path) -> None:
    root = tmp_path / "junk"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.png").write_bytes(b"not an image")
    messages = []
    for workers in (0, 2):
        with pytest.raises(BadImageError) as info:
            for _ in folder_loader(root, 8, 2, num_workers=workers, pin_memory=False):
                pass
        messages.append(_one_line(info.value))
    assert messages[0] == messages[1] and "none of the 4 image files" in messages[0]
    assert "Original Traceback" not in messages[1] and "DataLoader worker" not in messages[1]


# ------------------------------------------------------------------------------------------------ array files


def _write_npy_header(path: Path, shape: tuple[int, ...], payload: bytes) -> Path:
    with open(path, "wb") as f:
        npformat.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        f.write(payload)
    return path


def test_a_npy_cut_short_is_one_line(tmp_path: Path) -> None:
    whole = tmp_path / "whole.npy"
    np.save(whole, np.zeros((100, 3, 8, 8), np.uint8))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(whole.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut\.npy is cut short: its header says shape \(100, 3, 8, 8\)") as info:
        load(cut)
    _one_line(info.value)


def test_a_header_claiming_an_impossible_size_is_refused_before_any_allocation(tmp_path: Path) -> None:
    huge = _write_npy_header(tmp_path / "huge.npy", (10**6, 3, 512, 512), b"\0" * 100)
    with pytest.raises(ValueError, match=r"732\.4 GiB.*only 100 bytes") as info:
        load(huge)  # numpy itself would first ask for 732 GiB
    _one_line(info.value)
    # the same claim inside an archive: the member holds too few bytes for its header
    archive = tmp_path / "huge.npz"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("images.npy", huge.read_bytes())
    with pytest.raises(ValueError, match=r"array 'images'.*732\.4 GiB.*damaged") as info:
        load(archive)
    _one_line(info.value)


def test_damaged_archives_are_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez_compressed(good, images=np.random.default_rng(0).integers(0, 255, (64, 1, 8, 8), dtype=np.uint8))
    raw = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF  # inside the compressed data: a bad CRC or a broken deflate stream
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(flipped))
    for path in (cut, bad):
        with pytest.raises(ValueError, match=r"damaged|not a readable") as info:
            load(path)
        _one_line(info.value)
        with pytest.raises(ValueError) as info:
            load_arrays(path, kind="table")
        _one_line(info.value)


def test_a_deflate_ratio_no_stream_can_have_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.npz"
    np.savez_compressed(archive, x=np.zeros((4, 4)))
    raw = bytearray(archive.read_bytes())
    # claim 1 TiB uncompressed in the central directory entry (offset 24 of the entry: uncompressed size)
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (0xFFFFFFF0).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as info:
        check_numpy_file(archive)
    assert "4.0 GiB from" in _one_line(info.value) and "deflate cannot produce" in str(info.value)


def test_object_arrays_and_text_columns_name_the_problem(tmp_path: Path) -> None:
    text = tmp_path / "text.npz"
    np.savez(text, x=np.array([["1.5", "2", "red"], ["3", "4", "blue"]]))
    with pytest.raises(ValueError, match=r"column 2 of the table data holds text \('red' in row 0\)") as info:
        load_arrays(text, kind="table")
    _one_line(info.value)
    records = tmp_path / "records.npz"
    rec = np.zeros(3, dtype=[("height", "f8"), ("colour", "U8")])
    np.savez(records, x=rec)
    with pytest.raises(ValueError, match=r"column 'colour' of the table data holds <U8 values") as info:
        load_arrays(records, kind="table")
    _one_line(info.value)
    numeric = tmp_path / "numeric.npz"
    np.savez(numeric, x=np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]), y=np.array([0, 1, 0]))
    assert tuple(load_arrays(numeric, kind="table").x.shape) == (3, 2)  # number columns are read
    objects = tmp_path / "objects.npz"
    with zipfile.ZipFile(objects, "w") as z, z.open("x.npy", "w") as f:  # numpy.savez of an object array
        npformat.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (2, 2)})
    with pytest.raises(ValueError, match=r"holds Python objects") as info:
        load_arrays(objects, kind="table")
    _one_line(info.value)


# ------------------------------------------------------------------------------------------------ special files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_pipes_devices_and_folders_are_named_for_what_they_are(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert path_kind(fifo) == "a named pipe (FIFO)" and path_kind(tmp_path) == "a folder"
    assert path_kind(tmp_path / "nothing") == "nothing"
    with pytest.raises(ValueError, match=r"pipe is a named pipe \(FIFO\), not a data file or folder") as info:
        load(fifo)
    _one_line(info.value)
    if Path("/dev/null").exists():
        with pytest.raises(ValueError, match=r"/dev/null is a character device"):
            load("/dev/null")
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a \.npz file"):
        load_arrays(tmp_path, kind="signal")
    with pytest.raises(ValueError, match=r"a named pipe \(FIFO\), not a \.npz file"):
        load_arrays(fifo, kind="table")
    with pytest.raises(ValueError, match=r"a named pipe \(FIFO\), not an image folder"):
        scan_folder(fifo)
    with pytest.raises(NotADirectoryError, match="is a file, not an image folder"):
        expect_folder(Path(__file__), "an image folder")
    assert expect_file(Path(__file__), "a test") == Path(__file__)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_the_cli_says_what_a_pipe_given_as_data_is(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = run_cli("train", "--data", fifo, "--out", tmp_path / "run", "--device", "cpu", "--epochs", "1")
    assert result.returncode != 0
    assert "named pipe (FIFO), not a data file or folder" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "needs a size" not in result.stderr


def test_the_cli_refuses_a_cut_array_file_in_one_line(tmp_path: Path) -> None:
    huge = _write_npy_header(tmp_path / "huge.npy", (10**6, 3, 512, 512), b"\0" * 100)
    result = run_cli("train", "--data", huge, "--out", tmp_path / "run", "--device", "cpu", "--epochs", "1")
    assert result.returncode != 0 and "is cut short" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
