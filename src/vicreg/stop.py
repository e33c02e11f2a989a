"""Stopping a run cleanly: SIGTERM or SIGINT (Ctrl-C) set a flag that the training loop reads at each step
boundary, where it saves a checkpoint and returns; a second signal stops at once (``KeyboardInterrupt``)."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

__all__ = ["StopSignal"]


class StopSignal:
    """``with StopSignal() as stop:`` ... ``stop.received`` is the first signal's number, or ``None``. Outside
    the main thread the handlers cannot be set and signals stay as they are."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
