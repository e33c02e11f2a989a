"""Stopping a run cleanly: SIGTERM or SIGINT (Ctrl-C) set a flag that the training loop reads at each step
boundary, where it saves a checkpoint and returns.

A second signal before that save has completed aborts it (:class:`StopAborted`, raised from the handler): the
write in progress is abandoned (checkpoint writes are atomic, so the previous checkpoint stays intact) and the
command ends without a traceback. Once the save is done (:meth:`StopSignal.saved`) further signals are ignored:
only the exit is left. Under an elastic launcher (torchrun) a second signal is not the user's: the agent
forwards to its workers the signal it received, which a signal to the whole process group has already delivered;
there a second signal is ignored and the abort is the agent's own (it kills its workers after its grace period).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["StopAborted", "StopSignal", "exit_status", "under_launcher"]


class StopAborted(KeyboardInterrupt):
    """A second stop signal arrived before the stop's checkpoint was saved: nothing more is saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by ``signum``: 128 + its number (143 SIGTERM, 130 SIGINT)."""
    return 128 + int(signum)


def under_launcher() -> bool:
    """Whether this process was started by torchrun's elastic agent (which forwards the signals it receives)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


class StopSignal:
    """``with StopSignal(on_stop) as stop:`` ... ``stop.received`` is the first signal's number, or ``None``.

    Args:
        on_stop: called from the handler at the first signal (e.g. ``loader.request_stop``): cheap, no I/O.
        abort_on_second: a second signal before :meth:`saved` raises :class:`StopAborted` (default: unless
            under an elastic launcher, see the module doc); otherwise it is ignored.

    Outside the main thread the handlers cannot be set and signals stay as they are.
    """

    def __init__(self, on_stop: Callable[[], None] | None = None, *, abort_on_second: bool | None = None) -> None:
        self.received: int | None = None
        self.done = False
        self.on_stop = on_stop
        self.abort_on_second = not under_launcher() if abort_on_second is None else abort_on_second
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            if self.on_stop is not None:
                self.on_stop()
        elif self.abort_on_second and not self.done:  # a second signal: give up the save
            raise StopAborted(signum)

    def saved(self) -> None:
        """The stop's checkpoint is written: from now on signals are ignored (only the exit is left)."""
        self.done = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
