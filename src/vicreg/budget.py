"""Time budgets (``--budget-minutes``) and the schedule's length: plain numbers in, a plan out.

A budgeted run does not know its length when it starts. :class:`Budget` times its first steps (the first
:data:`WARM_STEPS` of a process are not timed: allocations, first calls), then :func:`budget_total` buys the
largest total whose steps, kNN monitors, checkpoints and backbone export fit in what is left, less
:data:`BUDGET_MARGIN`. The warm-up keeps its length in steps, so the steps taken while timing already follow the
final :class:`Schedule`. The clock is an argument (``time.monotonic`` by default): tests drive it by hand.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vicreg.optim import warmup_cosine

__all__ = [
    "BUDGET_MARGIN",
    "MEASURED_STEPS",
    "MEASURE_FRACTION",
    "MEASURE_MAX_S",
    "WARM_STEPS",
    "Budget",
    "Schedule",
    "budget_total",
    "budget_words",
    "plan_schedule",
]

# the first WARM_STEPS steps of a process are not timed; then at least MEASURED_STEPS steps and
# min(MEASURE_MAX_S, MEASURE_FRACTION of the budget) seconds are
WARM_STEPS = 2
MEASURED_STEPS = 5
MEASURE_MAX_S = 30.0
MEASURE_FRACTION = 0.05
BUDGET_MARGIN = 0.03
"""The budgeted run is planned to end this fraction of the budget early (step rates drift on shared machines)."""


@dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule's length: ``total`` steps (``None`` while a time budget is being measured),
    ``warmup`` of them linear from 0, then a cosine to the end; ``budget_minutes`` when a budget decided it."""

    total: int | None
    warmup: int
    budget_minutes: float | None = None

    def lr(self, step: int, peak: float, final_ratio: float) -> float:
        """The rate at ``step``. While the total is unknown, the warm-up (whose length does not depend on the
        total) or the peak: the steps taken while measuring follow the schedule that is decided after them."""
        if self.total is None:
            return peak * step / self.warmup if step < self.warmup else peak
        return warmup_cosine(step, self.total, min(self.warmup, self.total), peak, final_ratio)

    def with_total(self, total: int) -> Schedule:
        """The budget's schedule once its total is known; the warm-up is at most half of it."""
        return Schedule(total, min(self.warmup, total // 2), self.budget_minutes)

    def last_step(self, max_steps: int | None) -> int:
        """Where a process stops: the schedule's end, or ``max_steps`` when sooner. While a budget is measured:
        ``max_steps``, or no limit yet."""
        if self.total is None:
            return max_steps if max_steps is not None else sys.maxsize
        return self.total if max_steps is None else min(max_steps, self.total)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "warmup": self.warmup, "budget_minutes": self.budget_minutes}


def plan_schedule(
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    budget_minutes: float | None,
    stored: Mapping[str, Any] | None,
    resumed: bool,
    where: str = "the run folder",
) -> Schedule:
    """The schedule of a run: the one a budgeted checkpoint stores (never re-measured), else ``epochs`` long,
    else (``budget_minutes``) to be measured. ``stored``: the checkpoint's ``schedule`` entry; ``where``: the
    run folder, for the error of a run resumed with a budget it was not started with."""
    warmup = round(warmup_epochs * steps_per_epoch)
    if stored is not None and stored.get("budget_minutes") is not None:
        total = stored.get("total")
        if total is not None:
            return Schedule(int(total), int(stored["warmup"]), float(stored["budget_minutes"]))
        return Schedule(None, warmup, budget_minutes or float(stored["budget_minutes"]))
    if budget_minutes is not None:
        if resumed:
            raise ValueError(
                f"{where} holds a run started without --budget-minutes; resume it without --budget-minutes "
                "(its schedule spans --epochs), or start the budgeted run in another --out folder"
            )
        return Schedule(None, warmup, budget_minutes)
    total = epochs * steps_per_epoch
    return Schedule(total, min(total, warmup), None)


def budget_total(
    step: int,
    seconds: float,
    step_s: float,
    *,
    steps_per_epoch: int,
    knn_every: int,
    monitor_s: float,
    ckpt_every: int,
    ckpt_s: float,
) -> int:
    """The largest total ``T >= step`` such that the steps ``step+1 .. T`` (``step_s`` each), the kNN monitors
    of the epochs ending in them (``monitor_s`` each, every ``knn_every`` epochs; 0: none), the checkpoints
    every ``ckpt_every`` steps before ``T``, the final one and the backbone export (``ckpt_s`` each) take at
    most ``seconds``. ``step`` itself when not even one step fits."""
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    every = steps_per_epoch * knn_every

    def cost(total: int) -> float:
        monitors = total // every - step // every if knn_every > 0 else 0
        saves = (total - 1) // ckpt_every - step // ckpt_every + 2  # periodic, the final one, the export
        return (total - step) * step_s + monitors * monitor_s + max(saves, 1) * ckpt_s

    lo, hi = step, step + int(seconds / step_s) + 1  # cost(hi) > seconds: the steps alone exceed it
    if cost(lo + 1) > seconds:
        return step
    lo += 1
    while hi - lo > 1:  # cost grows with the total: the last total that fits
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return lo


@dataclass
class Budget:
    """A budget of ``minutes`` from ``started`` (a ``clock()`` reading) for a process that began at
    ``first_step``: times the steps until the total can be decided, less the monitors and checkpoints inside
    the timed window (which are timed on their own and count in the plan). ``knn_every`` 0: no monitor."""

    minutes: float
    started: float
    first_step: int
    steps_per_epoch: int
    knn_every: int
    ckpt_every: int
    max_steps: int | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    window_start: float | None = None
    window_step: int = 0
    extra_s: float = 0.0
    monitor_s: float | None = None
    ckpt_s: float | None = None

    @staticmethod
    def too_short(step: int, max_steps: int | None) -> bool:
        """``max_steps`` ends the process before its steps could be timed: its length is ``max_steps``."""
        return max_steps is not None and max_steps <= step + WARM_STEPS + MEASURED_STEPS

    def begin(self, step: int) -> None:
        """Called after each step that counts: the timed window opens at the first call once the warm steps are
        done (later than that when the caller starts calling later, e.g. after choosing the thread count)."""
        if self.window_start is None and step >= self.first_step + WARM_STEPS:
            self.window_start, self.window_step, self.extra_s = self.clock(), step, 0.0

    def step_s(self, step: int) -> float | None:
        """Seconds per step once enough steps were timed, else ``None``."""
        if self.window_start is None:
            return None
        n = step - self.window_step
        spent = self.clock() - self.window_start - self.extra_s
        if n < MEASURED_STEPS or spent < min(MEASURE_MAX_S, MEASURE_FRACTION * 60 * self.minutes):
            return None
        return spent / n

    def left_s(self) -> float:
        """Seconds left before the budget's planned end (the margin already taken off)."""
        return self.started + 60 * self.minutes * (1 - BUDGET_MARGIN) - self.clock()

    def spent_on_monitor(self, seconds: float) -> None:
        self.monitor_s, self.extra_s = seconds, self.extra_s + seconds

    def spent_on_checkpoint(self, seconds: float) -> None:
        self.ckpt_s, self.extra_s = seconds, self.extra_s + seconds

    def total(self, step: int, step_s: float, *, steps_only: bool = False, reserve_s: float = 0.0) -> int:
        """The total that fits in what is left less ``reserve_s`` (:func:`budget_total`), at most ``max_steps``;
        monitors and checkpoints not timed yet (or all of them, ``steps_only``: a first guess) count as free."""
        monitor_s, ckpt_s = (0.0, 0.0) if steps_only else (self.monitor_s or 0.0, self.ckpt_s or 0.0)
        timing = {"steps_per_epoch": self.steps_per_epoch, "knn_every": self.knn_every, "ckpt_every": self.ckpt_every}
        total = budget_total(step, self.left_s() - reserve_s, step_s, **timing, monitor_s=monitor_s, ckpt_s=ckpt_s)
        return total if self.max_steps is None else min(total, self.max_steps)

    def monitor_due(self, step: int, total: int) -> bool:
        """A monitor runs before ``total`` but none was timed yet: time one now."""
        every = self.steps_per_epoch * self.knn_every
        return self.monitor_s is None and self.knn_every > 0 and total // every > step // every

    def decide(
        self, step: int, step_s: float, time_monitor: Callable[[], float], time_checkpoint: Callable[[int], float]
    ) -> int:
        """The run's total once ``step_s`` is known, what it costs included: a kNN monitor due before the first
        guess but not timed yet is run now (``time_monitor()`` returns its seconds), and a checkpoint too
        (``time_checkpoint(guess)``: it stores the guess, which the decision's own checkpoint replaces; that
        one is planned for as well)."""
        guess = self.total(step, step_s, steps_only=True)
        if self.monitor_due(step, guess):
            self.monitor_s = time_monitor()
        if self.ckpt_s is None:
            self.ckpt_s = time_checkpoint(guess)
        return self.total(step, step_s, reserve_s=self.ckpt_s)


def budget_words(schedule: Schedule, step: int, steps_per_epoch: int, step_s: float, elapsed_s: float) -> str:
    """The line that says what a time budget bought."""
    assert schedule.total is not None and schedule.budget_minutes is not None
    return (
        f"budget: {schedule.budget_minutes:g} minutes buy {schedule.total} steps = "
        f"{schedule.total / steps_per_epoch:.3g} epochs ({step_s:.3g} s per step measured over the first {step}; "
        f"{elapsed_s:.0f} s spent so far); warm-up {min(schedule.warmup, schedule.total)} steps, cosine to step "
        f"{schedule.total}"
    )
