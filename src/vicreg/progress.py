"""Progress for the commands that are not training (``eval``, ``embed``, ``neighbors``, ``report``): no silent
minutes.

:class:`Progress` prints what is being done (:meth:`Progress.stage`) and wraps an iterable of batches
(:meth:`Progress.track`) with counts and a rate: a tqdm bar on a terminal; elsewhere (``make demo > log``, CI,
SLURM) a plain line at least every ``every`` seconds and one when the loop ends, as training's progress lines do.
The clock and the streams are arguments, so tests read the lines from a ``StringIO`` under a fake clock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

__all__ = ["EVERY_SECONDS", "Progress", "format_count", "progress_line"]

T = TypeVar("T")
S = TypeVar("S", bound=Sized)

EVERY_SECONDS = 10.0
"""Without a bar, a progress line at least this often while a loop runs."""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def format_count(n: float) -> str:
    """``950``, ``8.33``, ``12.3k``, ``4.56M``."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def progress_line(desc: str, done: int, total: int | None, elapsed: float, unit: str, final: bool = False) -> str:
    """``features vicreg: 12.3k/70k images (18%) | 1.02k images/s | 0:00:12, ETA 0:00:56``; the final line
    ``features vicreg: 70k images in 0:01:08 (1.03k images/s)``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    speed = f"{format_count(rate)} {unit}/s" if elapsed > 0 else f"? {unit}/s"
    if final:
        return f"{desc}: {format_count(done)} {unit} in {tqdm.format_interval(elapsed)} ({speed})"
    count = f"{format_count(done)}/{format_count(total)} {unit} ({100 * done / total:.0f}%)" if total else ""
    count = count or f"{format_count(done)} {unit}"
    eta = tqdm.format_interval((total - done) / rate) if total and rate > 0 and total >= done else "?"
    return f"{desc}: {count} | {speed} | {tqdm.format_interval(elapsed)}, ETA {eta}"


class Progress:
    """Stages and progress of one command.

    Args:
        out: where stage messages and progress lines go (default ``sys.stdout``).
        bar: show a tqdm bar instead of lines; default: when both ``bar_file`` and ``out`` are terminals.
        bar_file: where the bar is drawn (default ``sys.stderr``).
        every: seconds between progress lines without a bar.
        clock: seconds, monotonic (``time.monotonic``; a fake one in tests).
        enabled: ``False`` prints nothing (``--quiet``); :meth:`track` still yields every item.
    """

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        bar: bool | None = None,
        bar_file: TextIO | None = None,
        every: float = EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be > 0 seconds, got {every}")
        self.out = out if out is not None else sys.stdout
        self.bar_file = bar_file if bar_file is not None else sys.stderr
        self.bar = _isatty(self.bar_file) and _isatty(self.out) if bar is None else bar
        self.every = every
        self.clock = clock
        self.enabled = enabled

    def stage(self, message: str) -> None:
        """Say what is being done now (``features of 70000 test images for vicreg``, ``linear probe``)."""
        if not self.enabled:
            return
        if self.bar:
            tqdm.write(message, file=self.out)
        else:
            print(message, file=self.out, flush=True)

    def track(
        self,
        items: Iterable[T],
        desc: str,
        *,
        total: int | None = None,
        unit: str = "batches",
        count: Callable[[T], int] | None = None,
    ) -> Iterator[T]:
        """Yield ``items`` while showing how many are done (``count(item)`` each, e.g. the rows of a batch;
        default 1) of ``total`` (default ``len(items)`` when it has one), the rate and the ETA."""
        if total is None and hasattr(items, "__len__") and count is None:
            total = len(items)  # type: ignore[arg-type]
        if not self.enabled:
            yield from items
            return
        if self.bar:
            yield from self._bar(items, desc, total, unit, count)
        else:
            yield from self._lines(items, desc, total, unit, count)

    def batches(self, desc: str, total: int, unit: str = "rows") -> Callable[[Iterable[S]], Iterator[S]]:
        """A wrapper for an iterable of batches that counts their rows (``len``) out of ``total``; e.g.
        ``extract_features(..., track=progress.batches("features vicreg", len(rows), "images"))``."""

        def wrap(items: Iterable[S]) -> Iterator[S]:
            return self.track(items, desc, total=total, unit=unit, count=len)

        return wrap

    def _bar(
        self, items: Iterable[T], desc: str, total: int | None, unit: str, count: Callable[[T], int] | None
    ) -> Iterator[T]:
        kw: dict[str, Any] = {"unit_scale": True} if count is not None else {}
        with tqdm(total=total, desc=desc, unit=unit, file=self.bar_file, dynamic_ncols=True, leave=True, **kw) as bar:
            for item in items:
                yield item
                bar.update(count(item) if count is not None else 1)

    def _lines(
        self, items: Iterable[T], desc: str, total: int | None, unit: str, count: Callable[[T], int] | None
    ) -> Iterator[T]:
        start = last = self.clock()
        done = 0
        for item in items:
            yield item
            done += count(item) if count is not None else 1
            now = self.clock()
            if now - last >= self.every and (total is None or done < total):  # the final line says the rest
                last = now
                print(progress_line(desc, done, total, now - start, unit), file=self.out, flush=True)
        print(progress_line(desc, done, total, self.clock() - start, unit, final=True), file=self.out, flush=True)
