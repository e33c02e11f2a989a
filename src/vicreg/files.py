"""Atomic file writes: a crash, a full disk or ``kill -9`` never leaves a half-written file.

:func:`atomic_write` writes to a temporary file in the same folder, flushes it to disk, optionally checks it,
then renames it over the target (``os.replace`` is atomic on POSIX) and syncs the folder, so the previous file
stays intact until the new one is complete. :func:`remove_partial_writes` deletes the temporary files a killed
process left behind. Every file vicreg writes (checkpoints, backbones, exports, metrics, caches, plots) goes
through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FileError", "atomic_write", "fsync_dir", "remove_partial_writes"]

# mkstemp creates files readable by their owner only; written files get the usual mode (0o666 minus the umask)
UMASK = os.umask(0)
os.umask(UMASK)


class FileError(RuntimeError):
    """A file vicreg writes or reads that cannot be: a failed write (disk full, read-only file system, no
    permission), or a truncated, damaged or foreign checkpoint or backbone file.

    ``vicreg.checkpoint.CheckpointError`` is this class (checkpoints were its first users).
    """


def atomic_write(path: str | os.PathLike[str], write: Any, check: Callable[[Path], object] | None = None) -> Path:
    """Call ``write(file_object)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``.

    ``check(temporary_path)``, when given, runs on the written file before the rename: if it raises, nothing
    is renamed. On any error the temporary file is removed and ``path`` is left as it was; an operating-system
    error (disk full, read-only, no permission) becomes a :class:`FileError` naming the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise FileError(
            f"cannot write {path}: {err.strerror or err}; check that the folder exists and is writable"
        ) from err
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(err)
        if cause is not None:
            raise FileError(
                f"could not write {path}: {cause.strerror or cause} (disk full or read-only?); "
                "the previous file, if any, is intact"
            ) from err
        raise
    fsync_dir(path.parent)
    return path


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a failed write as a RuntimeError of its zip writer
    ("unexpected pos ..."), raised while handling the OSError, which is the useful part."""
    seen: BaseException | None = err
    for _ in range(10):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def remove_partial_writes(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` when its process was killed
    mid-write (``kill -9``, out-of-memory killer); returns what was removed.

    Only call this where no other process is writing into ``folder`` at the same time (in training: rank 0,
    before its first save).
    """
    folder = Path(folder)
    removed = []
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where the system does not allow it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
