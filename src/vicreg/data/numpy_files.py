""".npy / .npz files checked before numpy allocates anything: a file cut short, a header claiming an impossible
size or a damaged archive becomes one line instead of a traceback or an attempt to allocate hundreds of GiB.

numpy's own reader allocates the array the header describes and then fills it, so a 200-byte file whose header
says ``(10**6, 3, 512, 512)`` asks for 730 GiB first. :func:`check_numpy_file` reads only the headers
(:mod:`numpy.lib.format`) and compares what they claim with what the file (or the archive member) holds;
:func:`load_numpy` then loads, turning the errors a damaged archive raises while decompressing into one line.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat

__all__ = ["DAMAGED_ARCHIVE_ERRORS", "ArrayHeader", "check_numpy_file", "load_numpy", "read_header"]

DAMAGED_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
"""What reading a damaged .npz raises: a bad CRC (``BadZipFile``), a cut deflate stream (``zlib.error``,
``EOFError``), a header or size that does not parse (``ValueError``)."""

# The densest deflate stream expands about 1032 times; a member claiming more is damaged or hostile.
_MAX_DEFLATE_RATIO = 1100
_ZIP_MAGIC = b"PK\x03\x04"


class ArrayHeader:
    """What a ``.npy`` header says: ``shape``, ``dtype`` and the bytes of data that must follow it."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, data_offset: int) -> None:
        self.shape, self.dtype, self.data_offset = shape, dtype, data_offset

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize

    def describe(self) -> str:
        return f"shape {self.shape} of {self.dtype} ({_size(self.nbytes)})"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def read_header(f: IO[bytes], where: str) -> ArrayHeader:
    """The header of the ``.npy`` stream ``f`` (positioned at its start), read without touching the data.

    Raises:
        ValueError: not a ``.npy`` stream, an unreadable header, or an array of Python objects (which
            ``allow_pickle=False`` cannot load; usually a text column).
    """
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = npformat.read_array_header_1_0(f)
        else:
            shape, _fortran, dtype = npformat.read_array_header_2_0(f)  # 2.0 and 3.0 share the layout
    except (ValueError, EOFError, OSError) as err:
        raise ValueError(f"{where}: not a readable .npy header ({err})") from err
    if dtype.hasobject:
        raise ValueError(
            f"{where} holds Python objects ({dtype}), e.g. text: only numbers can be read (allow_pickle=False); "
            "save numeric arrays only, e.g. numpy.save(path, frame.select_dtypes('number').to_numpy())"
        )
    return ArrayHeader(tuple(int(d) for d in shape), dtype, f.tell())


def _check_npy(path: Path) -> None:
    with open(path, "rb") as f:
        header = read_header(f, str(path))
    have = os.path.getsize(path) - header.data_offset
    if have < header.nbytes:
        raise ValueError(
            f"{path} is cut short: its header says {header.describe()} but only {_size(max(have, 0))} of data "
            "follow; the file was not fully written or copied; write or copy it again"
        )


def _check_npz(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                where = f"{path} (array {info.filename.removesuffix('.npy')!r})"
                if info.compress_type == zipfile.ZIP_DEFLATED:
                    limit = info.compress_size * _MAX_DEFLATE_RATIO + 4096
                    if info.file_size > limit:
                        raise ValueError(
                            f"{where}: the archive claims {_size(info.file_size)} from {_size(info.compress_size)} "
                            "compressed, which deflate cannot produce; the archive is damaged"
                        )
                try:
                    with archive.open(info) as member:
                        header = read_header(member, where)
                except (zlib.error, EOFError, OSError) as err:  # BadZipFile is caught below
                    raise ValueError(f"{where}: the archive is damaged ({type(err).__name__}: {err})") from err
                have = info.file_size - header.data_offset
                if have < header.nbytes:
                    raise ValueError(
                        f"{where}: its header says {header.describe()} but the archive holds only "
                        f"{_size(max(have, 0))} of data for it; the archive is damaged or was cut short"
                    )
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"{path} is a damaged .npz archive ({err}); it was probably cut short while written or copied; "
            "write or copy it again"
        ) from err


def check_numpy_file(path: str | os.PathLike[str]) -> None:
    """Check the headers of a ``.npy`` file or of every array of a ``.npz`` archive against the bytes that are
    really there, reading only the headers. Files that are neither (by their first bytes) are left to
    ``numpy.load``'s own error.

    Raises:
        ValueError: one line: a file cut short, a header claiming more data than the file holds, a damaged
            archive, or an array of Python objects.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(npformat.MAGIC_PREFIX))
    if head == npformat.MAGIC_PREFIX:
        _check_npy(path)
    elif head.startswith(_ZIP_MAGIC):
        _check_npz(path)


def load_numpy(path: str | os.PathLike[str]) -> np.ndarray | Mapping[str, np.ndarray]:
    """:func:`check_numpy_file`, then ``numpy.load(path, allow_pickle=False)``: an array for a ``.npy``, every
    array of a ``.npz`` as a dict. A failure while decompressing (a bad CRC, a cut stream) is one line.

    Raises:
        ValueError: see :func:`check_numpy_file`; also an archive that fails while its arrays are read.
        OSError: the file cannot be opened at all (not a numpy file: numpy's message).
    """
    path = Path(path)
    check_numpy_file(path)
    content = np.load(path, allow_pickle=False)
    if isinstance(content, np.ndarray):
        return content
    with content:
        try:
            return {k: content[k] for k in content.files}
        except DAMAGED_ARCHIVE_ERRORS as err:
            raise ValueError(
                f"{path} is a damaged .npz archive ({type(err).__name__}: {err}); write or copy it again"
            ) from err
