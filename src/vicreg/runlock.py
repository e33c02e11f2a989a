"""One owner per run folder: an exclusive lock on ``RUN/.lock`` (``filelock``: an OS lock, released by the
kernel when its process dies, however it dies) and a sidecar ``RUN/.lock.json`` naming the holder.

``vicreg train`` holds it for its whole life (rank 0 only under torchrun: pass ``rank``); commands that write
into a run (eval, report, export into the run) hold it briefly. A second process refuses in one line naming the
holder: pid, host, command and start time. The sidecar is removed on a clean release, so finding one while the
OS lock is free means its holder died (``kill -9``, a lost node): the lock is taken over with a warning naming
the dead pid.

Usage::

    with hold_run(cfg.out, "train", rank=info.rank, warn=logger.warning):
        ...  # the whole run

A process may hold the same folder again (e.g. ``train`` writing its own report): nested holds are counted and
the lock is released by the outermost one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

__all__ = ["LOCK_NAME", "SIDECAR_NAME", "Holder", "RunBusyError", "RunLock", "hold_run", "read_holder"]

DEFAULT_FIX = "wait for it to finish, or stop it"
LOCK_NAME = ".lock"
SIDECAR_NAME = ".lock.json"


class RunBusyError(RuntimeError):
    """The run folder is held by another live process (the message names it)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run folder, as written in ``RUN/.lock.json``."""

    pid: int
    host: str
    command: str
    started: float  # time.time() when the lock was taken

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"`vicreg {self.command}` (pid {self.pid} on {self.host}, since {when})"

    @classmethod
    def me(cls, command: str, clock: Callable[[], float] = time.time) -> Holder:
        return cls(os.getpid(), socket.gethostname(), command, clock())


def read_holder(folder: str | os.PathLike[str]) -> Holder | None:
    """The holder recorded in ``folder/.lock.json``; ``None`` when there is none or it does not parse."""
    try:
        raw: Any = json.loads((Path(folder) / SIDECAR_NAME).read_text())
        return Holder(int(raw["pid"]), str(raw["host"]), str(raw["command"]), float(raw["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def _write_holder(folder: Path, holder: Holder) -> None:
    tmp = folder / f"{SIDECAR_NAME}.{holder.pid}.tmp"
    tmp.write_text(json.dumps(holder.__dict__) + "\n")
    os.replace(tmp, folder / SIDECAR_NAME)  # never a half-written sidecar


# Folders held by this process: nested holds are counted (a second OS lock on the same file from this process
# would wait for the first one forever).
_HELD: dict[Path, RunLock] = {}
_HELD_GUARD = threading.Lock()


class RunLock:
    """The exclusive lock of one run folder (see the module doc).

    Args:
        folder: the run folder (created if missing).
        command: what holds it, for the message a second process prints (``train``, ``eval``, ...).
        timeout: seconds to wait for a holder to finish before refusing (0: refuse at once; brief holds by
            eval/report/export may wait a few seconds for another brief hold).
        fix: the advice that ends the refusal (the CLI names its own flags, e.g. "or use another --out folder").
    """

    def __init__(
        self, folder: str | os.PathLike[str], command: str, *, timeout: float = 0.0, fix: str = DEFAULT_FIX
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.command, self.timeout, self.fix = command, timeout, fix
        self._lock: FileLock | None = None
        self.taken_over: Holder | None = None
        """The dead holder whose stale lock was taken over by :meth:`acquire`, if any."""

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunBusyError` naming the live holder.

        Returns ``self``; :attr:`taken_over` names a dead holder whose lock was taken over.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.folder / LOCK_NAME), timeout=self.timeout)
        try:
            lock.acquire()
        except Timeout:
            holder = read_holder(self.folder)
            if holder is not None and holder.host == socket.gethostname() and not _alive(holder.pid):
                raise RunBusyError(  # a soft lock (no OS locks on this file system) left by a dead process
                    f"{self.folder} is locked by {holder.describe()}, which is no longer running, and this file "
                    f"system does not release the locks of dead processes; delete {self.folder / LOCK_NAME}"
                ) from None
            who = holder.describe() if holder else "another process (it has not written .lock.json yet)"
            raise RunBusyError(f"{self.folder} is in use by {who}; {self.fix}") from None
        # The OS lock was free, so a sidecar left behind is that of a holder that died without releasing.
        self.taken_over = read_holder(self.folder)
        _write_holder(self.folder, Holder.me(self.command))
        self._lock = lock
        return self

    def release(self) -> None:
        """Remove the sidecar, then release the OS lock (so a new holder never sees ours)."""
        if self._lock is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.folder / SIDECAR_NAME).unlink()
        self._lock.release()
        self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)


@contextlib.contextmanager
def hold_run(
    folder: str | os.PathLike[str],
    command: str,
    *,
    rank: int = 0,
    timeout: float = 0.0,
    fix: str = DEFAULT_FIX,
    warn: Callable[[str], None] = _warn,
) -> Iterator[RunLock | None]:
    """Hold ``folder``'s lock for the ``with`` block (see :class:`RunLock`); ``rank != 0`` holds nothing (under
    torchrun rank 0 owns the folder). ``warn`` receives the one line about a dead holder's lock taken over.

    Raises:
        RunBusyError: another live process holds the folder.
    """
    if rank != 0:
        yield None
        return
    key = Path(folder).expanduser().resolve()
    with _HELD_GUARD:
        outer = _HELD.get(key)
    if outer is not None:  # nested: this process already holds it
        yield outer
        return
    lock = RunLock(folder, command, timeout=timeout, fix=fix).acquire()
    if lock.taken_over is not None:
        dead = lock.taken_over
        warn(f"{lock.folder}: lock taken over from dead pid {dead.pid} ({dead.describe()} ended without releasing it)")
    with _HELD_GUARD:
        _HELD[key] = lock
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        lock.release()
