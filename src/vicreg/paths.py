"""What a path is, in words, for messages about inputs that are not what a command expects.

``vicreg train --data /dev/zero`` or a named pipe used to be read as "an image folder, which needs a size"; a
folder given where a file is expected was said not to exist. :func:`path_kind` names what is there, and
:func:`expect_file` / :func:`expect_folder` turn a wrong kind into one line naming it and the fix.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["expect_file", "expect_folder", "path_kind"]

_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def path_kind(path: str | os.PathLike[str]) -> str:
    """``"a file"``, ``"a folder"``, ``"a named pipe (FIFO)"``, ``"a character device"``, ``"a block device"``,
    ``"a socket"``, ``"a link that loops"``, ``"a broken link"`` or ``"nothing"`` (does not exist). Links
    are followed."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if os.path.islink(path):
            return "a link that loops" if err.errno == errno.ELOOP else "a broken link"
        return "nothing" if isinstance(err, FileNotFoundError) else f"unreadable ({err.strerror})"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return next((name for test, name in _SPECIAL if test(mode)), "a special file")


def expect_file(path: str | os.PathLike[str], what: str, fix: str = "") -> Path:
    """``path`` as a :class:`Path` when it is a regular file (links followed); otherwise one line naming what
    it is instead. ``what`` names the expected file (e.g. ``"a .npz file"``), ``fix`` is appended.

    Raises:
        FileNotFoundError: nothing is there.
        IsADirectoryError: a folder.
        ValueError: a pipe, a device, a socket, a link that loops or is broken.
    """
    p = Path(path).expanduser()
    kind = path_kind(p)
    if kind == "a file":
        return p
    tail = f"; {fix}" if fix else ""
    if kind == "nothing":
        raise FileNotFoundError(f"{p} does not exist (expected {what}){tail}")
    error = IsADirectoryError if kind == "a folder" else ValueError
    raise error(f"{p} is {kind}, not {what}{tail}")


def expect_folder(path: str | os.PathLike[str], what: str, fix: str = "") -> Path:
    """``path`` as a :class:`Path` when it is a folder (links followed); otherwise one line naming what it is.

    Raises:
        FileNotFoundError: nothing is there.
        NotADirectoryError: a file.
        ValueError: a pipe, a device, a socket, a link that loops or is broken.
    """
    p = Path(path).expanduser()
    kind = path_kind(p)
    if kind == "a folder":
        return p
    tail = f"; {fix}" if fix else ""
    if kind == "nothing":
        raise FileNotFoundError(f"{p} does not exist (expected {what}){tail}")
    error = NotADirectoryError if kind == "a file" else ValueError
    raise error(f"{p} is {kind}, not {what}{tail}")
