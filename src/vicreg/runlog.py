"""A run's log on rank 0: ``metrics.jsonl``, TensorBoard events, the progress display and the run's messages.

Progress is a tqdm bar on a terminal (stderr). Wherever stdout is not that terminal (``make demo > demo.log``,
CI, SLURM logs) it is also one plain line per log window on stdout, and at least one every
:data:`QUIET_SECONDS`: step/total, the loss and its terms, images/s, elapsed time and ETA.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vicreg.files import atomic_write

__all__ = ["QUIET_SECONDS", "RunLog", "drop_rows_after", "format_duration", "progress_line"]

QUIET_SECONDS = 30.0
"""Without a bar, a progress line is printed at least this often, even inside a long log window."""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class RunLog:
    """metrics.jsonl, TensorBoard, a progress bar or progress lines, and messages, on rank 0 only.

    ``out`` receives the messages and progress lines (default: ``sys.stdout``); the bar goes to stderr when it
    is a terminal. ``progress=False`` turns the bar and the lines off (messages stay).
    """

    def __init__(
        self, run_dir: Path, enabled: bool, progress: bool, total: int, start: int, out: TextIO | None = None
    ) -> None:
        self.enabled = enabled
        self.out = out if out is not None else sys.stdout
        if enabled:  # a killed run may have logged steps after its last checkpoint (or before its first)
            drop_rows_after(run_dir / "metrics.jsonl", start)
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self.tb = None
        self.bar = None
        if enabled:
            # purge_step: TensorBoard hides earlier events of steps >= start (a killed run's last steps)
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start)
        if enabled and progress and _isatty(sys.stderr):
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        # plain lines unless the bar already shows progress on the terminal the lines would go to
        self.lines = enabled and progress and not (self.bar is not None and _isatty(self.out))
        self.total, self.start, self.step = total, start, start
        self.t0 = self.last_line = time.monotonic()
        self.last_row: dict[str, Any] = {}

    def set_total(self, total: int) -> None:
        """The run's length, once known (a time budget decides it after the first steps)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def log(self, row: dict[str, Any]) -> None:
        """Write a metrics row; a row with a loss is also a progress line (without a bar) or the bar's postfix."""
        if not self.enabled:
            return
        assert self.file is not None
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, int | float):
                    self.tb.add_scalar(key.replace(".", "/"), value, row["step"])
        if "loss" in row:
            self.last_row = row
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
            if self.lines:
                self._line()

    def advance(self, n: int = 1) -> None:
        self.step += n
        if self.bar is not None:
            self.bar.update(n)
        if self.lines and time.monotonic() - self.last_line >= QUIET_SECONDS:
            self._line()

    def message(self, text: str) -> None:
        """A line for the person running it (the header, the resume line, monitor results), above the bar."""
        if not self.enabled:
            return
        if self.bar is not None and _isatty(self.out):
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def _line(self) -> None:
        now = time.monotonic()
        self.last_line = now
        print(progress_line(self.step, self.total, self.start, now - self.t0, self.last_row), file=self.out, flush=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def progress_line(step: int, total: int, start: int, elapsed: float, row: dict[str, Any]) -> str:
    """``step 40/1300 (3%) | loss 23.41 (invariance 0.81, variance 0.62, covariance 1.20) | 412 img/s |
    elapsed 0:01:23, ETA 0:08:12``; the loss part is that of ``row`` (the last log window), when there is one.
    The ETA extrapolates the rate of this process's steps (``start``: the step it began at)."""
    parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total > 0 else f"step {step}/?"]
    if "loss" in row:
        terms = ", ".join(f"{k} {row[k]:.3g}" for k in ("invariance", "variance", "covariance") if k in row)
        parts.append(f"loss {row['loss']:.4g}" + (f" ({terms})" if terms else ""))
    if "images_per_s" in row:
        parts.append(f"{row['images_per_s']:.0f} img/s")
    done = step - start
    eta = format_duration(elapsed / done * (total - step)) if done > 0 and total >= step > 0 else "?"
    parts.append(f"elapsed {format_duration(elapsed)}, ETA {eta}")
    return " | ".join(parts)


def format_duration(seconds: float) -> str:
    """``H:MM:SS``."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the complete metric lines of steps ``<= step``, the run's resume point: a run killed after its
    last checkpoint logged steps that the resumed run logs again, and may have left half a line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(row, dict) and row.get("step", step + 1) <= step:
            kept.append(line)
    atomic_write(path, lambda f: f.write("".join(kept).encode()))
