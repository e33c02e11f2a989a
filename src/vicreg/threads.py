"""How many CPU threads a process should use, chosen by measuring the work itself.

Torch's default is one thread per core. That is the fastest on an idle machine and much slower as soon as anything
else runs: on a 2-core machine with one other busy process, one step of the Fashion-MNIST preset took 1508 ms with
2 threads and 810 ms with 1 (benchmarks/README.md, "Threads"). So the trainer times its first steps at each
candidate count, keeps the fastest, and measures again when the step time drifts (another program started or
stopped). Everything here is plain numbers and an injected timer, so the decisions are tested without a clock.

Under torchrun each process on a machine starts from its share of the cores (:func:`default_threads`).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["ThreadChoice", "ThreadTuner", "available_cores", "candidate_counts", "choose_threads", "default_threads"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, local_processes: int | None = None) -> int:
    """The cores divided among the processes of this machine (``LOCAL_WORLD_SIZE`` under torchrun), at least 1."""
    cores = available_cores() if cores is None else cores
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local_processes))


def candidate_counts(limit: int) -> list[int]:
    """The counts worth timing up to ``limit``: 1, the powers of two below it, and the limit itself."""
    if limit < 1:
        raise ValueError(f"the thread limit must be at least 1, got {limit}")
    counts = {limit}
    n = 1
    while n < limit:
        counts.add(n)
        n *= 2
    return sorted(counts)


@dataclass(frozen=True)
class ThreadChoice:
    """The chosen count and the median seconds per unit of work measured at every candidate."""

    threads: int
    seconds: dict[int, float]

    def words(self) -> str:
        """``2 threads (measured: 1 -> 0.81 s, 2 -> 1.51 s per step)``, for the header and the log."""
        timed = ", ".join(f"{n} -> {s:.3g} s" for n, s in sorted(self.seconds.items()))
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} (measured: {timed} per step)"


def choose_threads(time_at: Callable[[int], float], candidates: Sequence[int], repeats: int = 2) -> ThreadChoice:
    """Time ``repeats`` units of work at every candidate count (``time_at(n)`` runs one unit with ``n`` threads and
    returns its seconds) and return the fastest by median; ties go to fewer threads (they leave cores to others).

    Candidates are visited round-robin (1, 2, 1, 2, ...) rather than in blocks, so a load that starts or stops in
    the middle of the measurement affects every candidate alike.
    """
    if not candidates:
        raise ValueError("no thread counts to choose from")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    samples: dict[int, list[float]] = {n: [] for n in candidates}
    for _ in range(repeats):
        for n in candidates:
            samples[n].append(time_at(n))
    seconds = {n: statistics.median(s) for n, s in samples.items()}
    best = min(seconds, key=lambda n: (seconds[n], n))
    return ThreadChoice(best, seconds)


@dataclass
class ThreadTuner:
    """Decides when to measure again: after ``every`` units of work at the earliest, once the recent median step time
    has drifted by more than ``drift`` (a fraction) from the time measured when the count was chosen.

    Call :meth:`chosen` with each :class:`ThreadChoice`, :meth:`observe` with every measured step; when it returns
    True, measure again (:func:`choose_threads`) and call :meth:`chosen` with the result.
    """

    every: int = 200
    drift: float = 0.25
    window: int = 20
    reference: float | None = None
    since: int = 0
    recent: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every < 1 or self.window < 1:
            raise ValueError("ThreadTuner: every and window must be at least 1")
        if self.drift <= 0:
            raise ValueError(f"ThreadTuner: drift must be positive, got {self.drift}")

    def chosen(self, choice: ThreadChoice) -> None:
        self.reference = choice.seconds[choice.threads]
        self.since = 0
        self.recent.clear()

    def observe(self, step_s: float) -> bool:
        self.since += 1
        self.recent.append(step_s)
        del self.recent[: -self.window]
        if self.reference is None or self.since < self.every or len(self.recent) < self.window:
            return False
        now = statistics.median(self.recent)
        return abs(now - self.reference) > self.drift * self.reference
