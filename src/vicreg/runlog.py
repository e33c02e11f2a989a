"""A run's log on rank 0: ``metrics.jsonl``, TensorBoard events, the progress display and the run's messages.

Progress is a tqdm bar on a terminal (stderr). Wherever stdout is not that terminal (``make demo > demo.log``,
CI, SLURM logs) it is also one plain line per log window on stdout, and at least one every
:data:`QUIET_SECONDS`: step/total, the loss and its terms, images/s, elapsed time and ETA.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vicreg.budget import Schedule
from vicreg.files import atomic_write

__all__ = [
    "ONLINE_PROTOCOL",
    "QUIET_SECONDS",
    "RunHeader",
    "RunLog",
    "TermWindow",
    "drop_rows_after",
    "format_duration",
    "knn_words",
    "progress_line",
]

QUIET_SECONDS = 30.0
"""Without a bar, a progress line is printed at least this often, even inside a long log window."""

ONLINE_PROTOCOL = "online_knn.protocol"
"""The metrics key of the online kNN monitor's protocol (a sentence); its values are ``online_knn.top1/top5``."""


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
        self,
        run_dir: Path,
        enabled: bool,
        progress: bool,
        total: int,
        start: int,
        out: TextIO | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.out = out if out is not None else sys.stdout
        if enabled:  # a killed run may have logged steps after its last checkpoint (or before its first)
            drop_rows_after(run_dir / "metrics.jsonl", start)
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self.tb = None
        self.bar = None
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        """Called with every metrics row (e.g. an experiment tracker's ``log_scalars``)."""
        if enabled and tensorboard:
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
        for sink in self.sinks:
            sink(row)
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

    def knn(self, step: int, epoch: float, online: Mapping[str, float], protocol: str) -> None:
        """The online kNN monitor's result: a metrics row naming its protocol, and a message."""
        self.log({"step": step, "epoch": epoch, **online, ONLINE_PROTOCOL: protocol})
        self.message(f"step {step}: {knn_words(online)} -- {protocol}")

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


class TermWindow:
    """The loss terms of the steps since the last log line, summed on the device (no host sync per step), and the
    first step whose terms were not finite with which of them were not (the loop's NaN guard reads it)."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names = names
        self.sums = torch.zeros(len(names), device=device, dtype=torch.float64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)
        self.bad_terms = torch.zeros(len(names), device=device, dtype=torch.bool)
        self.steps, self.started = 0, time.perf_counter()

    def add(self, terms: Tensor, step: int) -> None:
        """The terms of ``step`` (a vector, one per name); the non-finite ones are left out of the sums."""
        terms = terms.detach().double()
        bad = ~torch.isfinite(terms)
        newly = bad.any() & (self.first_bad < 0)
        self.first_bad = torch.where(newly, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad_terms = torch.where(newly, bad, self.bad_terms)
        self.sums += torch.where(bad, torch.zeros_like(terms), terms)
        self.steps += 1

    def first_non_finite(self) -> tuple[int, list[str]] | None:
        """The first step with a non-finite term and the names of those terms; ``None`` when all were finite."""
        step = int(self.first_bad)
        if step < 0:
            return None
        return step, [name for name, bad in zip(self.names, self.bad_terms.tolist(), strict=True) if bad]

    def read(self) -> tuple[dict[str, float], int, float]:
        """The window's mean terms, its steps and seconds (``time.perf_counter``); then a new window begins."""
        steps, seconds = self.steps, time.perf_counter() - self.started
        means = dict(zip(self.names, (self.sums / steps).tolist(), strict=True))
        self.sums.zero_()
        self.steps, self.started = 0, time.perf_counter()
        return means, steps, seconds


def knn_words(row: Mapping[str, float]) -> str:
    """``online kNN top1 78.9%, top5 ...`` of a row of ``online_knn.*`` accuracies."""
    return "online kNN " + ", ".join(f"{key.removeprefix('online_knn.')} {value:.1f}%" for key, value in row.items())


@dataclass(frozen=True)
class RunHeader:
    """What a run is about to train, as plain facts; :meth:`lines` is the header it prints first."""

    modalities: str  # "image", or "signal + table" for a pair
    out: str
    data: Mapping[str, Any]  # the data kind's summary: source, split, count, shape, classes
    encoders: tuple[tuple[str, str, int, int], ...]  # (branch, name, parameters, features) of each branch
    expander: str
    expander_params: int
    params: int
    device: str
    precision: str
    world_size: int
    batch_size: int  # global
    schedule: Schedule
    steps_per_epoch: int
    epochs: int
    max_steps: int | None
    optimizer: str
    base_lr: float
    peak_lr: float
    final_lr_ratio: float
    ckpt_every: int
    keep_checkpoints: int
    init: str | None = None  # the initial weights applied now (what was loaded), or...
    init_source: str = ""  # ...the source of those applied when the run started
    resumed_from: str | None = None  # the checkpoint this run resumes from
    step: int = 0  # the step it resumes at

    def lines(self) -> list[str]:
        """Data, model, device, batch, length and schedule, run folder, initial weights; new run or resumed."""
        s, sched = self.data, self.schedule
        shape = s.get("shape")
        shape_words = "x".join(map(str, shape)) if isinstance(shape, list | tuple) else str(shape)
        classes = f", {s['classes']} classes" if s.get("classes") else ", unlabelled"
        lines = [
            f"vicreg train: {self.modalities} -> {self.out}",
            f"  data        {s.get('source')} ({s.get('split')}): {s.get('count')} samples of {shape_words}{classes}",
        ]
        if s.get("views"):  # a data kind that says which views it chose (multi-band images)
            lines.append(f"  views       {s['views']}")
        for branch, name, params, features in self.encoders:
            lines.append(f"  encoder{branch:<4} {name}: {params:,} parameters, {features} features")
        lines.append(f"  expander    {self.expander}: {self.expander_params:,} parameters ({self.params:,} in all)")
        precision = "fp32" if self.precision == "fp32" else f"{self.precision} autocast (loss in fp32)"
        n = self.world_size
        lines.append(
            f"  device      {self.device}, {precision}, {n} process{'es' if n > 1 else ''}, batch "
            f"{self.batch_size // n} per process ({self.batch_size} global)"
        )
        lines.append(f"  length      {self._length()}")
        lines.append(
            f"  schedule    {self.optimizer}, peak lr {self.peak_lr:.4g} (base {self.base_lr:g} x "
            f"{self.batch_size}/256), {min(sched.warmup, sched.total or sched.warmup)} warm-up steps, cosine to "
            f"{self.peak_lr * self.final_lr_ratio:.3g}"
            + (f" at step {sched.total}" if sched.total is not None else " at the budget's end")
        )
        lines.append(
            f"  run folder  {self.out} (checkpoints every {self.ckpt_every} steps, {self.keep_checkpoints} kept)"
        )
        if self.init is not None:
            lines.append(f"  init        {self.init}")
        elif self.init_source:
            lines.append(f"  init        {self.init_source} applied when the run started (not again on resume)")
        if self.resumed_from is None:
            return [*lines, "starting a new run"]
        at = f"at step {self.step} of {sched.total or '?'} (epoch {self.step / self.steps_per_epoch:.2f})"
        return [*lines, f"resuming from {self.resumed_from} {at}"]

    def _length(self) -> str:
        sched, spe = self.schedule, self.steps_per_epoch
        if sched.total is None:
            cap = f", at most {self.max_steps} steps (--max-steps)" if self.max_steps else ""
            return (
                f"set by --budget-minutes {sched.budget_minutes:g} after timing the first steps{cap}; "
                f"--epochs {self.epochs} is ignored ({spe} steps per epoch)"
            )
        length = f"{sched.total} steps = {sched.total / spe:.4g} epochs of {spe} steps"
        if sched.budget_minutes is not None:
            length += f", bought by a {sched.budget_minutes:g}-minute budget (stored in the checkpoint)"
        stop = sched.last_step(self.max_steps)
        if stop < sched.total:
            length += f"; stops at step {stop} (--max-steps)"
        return length


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
