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

__all__ = [
    "StepThreads",
    "ThreadChoice",
    "ThreadTrial",
    "ThreadTuner",
    "available_cores",
    "candidate_counts",
    "choose_threads",
    "default_threads",
    "fixed_threads",
]


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

    def words(self, note: str = "") -> str:
        """``1 (measured: 1 -> 0.81 s, 2 -> 1.51 s per step; NOTE)``, for the run's ``threads`` line."""
        timed = ", ".join(f"{n} -> {s:.3g} s" for n, s in sorted(self.seconds.items()))
        return f"{self.threads} (measured: {timed} per step{'; ' + note if note else ''})"

    def row(self) -> dict[str, float]:
        """The choice as a metrics row's fields: ``threads`` and ``threads.seconds.N`` for every count timed."""
        return {"threads": self.threads, **{f"threads.seconds.{n}": s for n, s in sorted(self.seconds.items())}}


def fixed_threads(requested: int | None, environ: dict[str, str] | None = None) -> tuple[int, str] | None:
    """A count decided before any measurement, with the reason, or ``None`` (choose by measurement).

    ``--threads N`` decides; so does ``OMP_NUM_THREADS`` outside torchrun (the usual knob: ``OMP_NUM_THREADS=1``
    gives bit-identical reruns). Under torchrun it does not, because torchrun sets it to 1 itself whenever the user
    did not, so it cannot tell a choice from its own default.
    """
    environ = dict(os.environ) if environ is None else environ
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}; omit --threads to choose by measurement")
        return requested, "--threads"
    omp = environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) >= 1 and "LOCAL_WORLD_SIZE" not in environ:
        return int(omp), "OMP_NUM_THREADS"
    return None


def choose_threads(time_at: Callable[[int], float], candidates: Sequence[int], repeats: int = 2) -> ThreadChoice:
    """Time ``repeats`` units of work at every candidate count (``time_at(n)`` runs one unit with ``n`` threads and
    returns its seconds) and return the fastest by median; ties go to fewer threads (they leave cores to others).

    Candidates are visited round-robin (1, 2, 1, 2, ...) rather than in blocks, so a load that starts or stops in
    the middle of the measurement affects every candidate alike.
    """
    trial = ThreadTrial(candidates, repeats, warm=False)
    while (choice := trial.record(time_at(trial.count()))) is None:
        pass
    return choice


class ThreadTrial:
    """One measurement driven from outside, one unit of work at a time (the training loop's steps): run the next
    unit with :meth:`count` threads, then :meth:`record` its seconds; the last record returns the choice.

    Candidates are visited round-robin, ``repeats`` times; with ``warm`` a first untimed round goes before
    (the first unit at a new count pays for thread start-up and per-count kernel set-up).
    """

    def __init__(self, candidates: Sequence[int], repeats: int = 2, *, warm: bool = True) -> None:
        if not candidates:
            raise ValueError("no thread counts to choose from")
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        self.candidates = list(candidates)
        self.order = self.candidates * (repeats + int(warm))
        self.untimed = len(self.candidates) if warm else 0
        self.done = 0
        self.samples: dict[int, list[float]] = {n: [] for n in self.candidates}

    def count(self) -> int:
        """The thread count for the next unit of work."""
        return self.order[self.done]

    def record(self, seconds: float) -> ThreadChoice | None:
        """The seconds of the unit just run at :meth:`count`; the choice once every unit is timed."""
        if self.done >= self.untimed:
            self.samples[self.order[self.done]].append(seconds)
        self.done += 1
        if self.done < len(self.order):
            return None
        med = {n: statistics.median(s) for n, s in self.samples.items()}
        return ThreadChoice(min(med, key=lambda n: (med[n], n)), med)


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


class StepThreads:
    """The thread count of a training loop, chosen by measuring its own steps.

    Before each step call :meth:`count` (and set it); after the step, :meth:`record` its seconds. The first steps
    are a :class:`ThreadTrial` over ``candidates`` (``repeats`` timed rounds after a warm one); they are real steps,
    only run at different counts. When a trial ends, :meth:`record` returns its :class:`ThreadChoice`: pass it (or
    the choice another process made, under torchrun) to :meth:`settle`. Then a :class:`ThreadTuner` watches the
    step time; every ``tuner.every`` steps, if it drifted, ``agree(1)`` (rank 0's verdict under torchrun, so that
    every process measures at the same steps) starts a short re-check of ``recheck_repeats`` rounds.
    """

    def __init__(
        self,
        candidates: Sequence[int],
        *,
        repeats: int = 3,
        recheck_repeats: int = 2,
        tuner: ThreadTuner | None = None,
        agree: Callable[[int], int] = lambda verdict: verdict,
    ) -> None:
        self.candidates = list(candidates)
        self.recheck_repeats = recheck_repeats
        self.tuner = tuner if tuner is not None else ThreadTuner()
        self.agree = agree
        self.trial: ThreadTrial | None = ThreadTrial(self.candidates, repeats, warm=True)
        self.choice: ThreadChoice | None = None

    @property
    def measuring(self) -> bool:
        """A trial is under way (the step time is not the chosen count's)."""
        return self.trial is not None

    def count(self) -> int:
        if self.trial is not None:
            return self.trial.count()
        assert self.choice is not None
        return self.choice.threads

    def record(self, seconds: float) -> ThreadChoice | None:
        if self.trial is not None:
            return self.trial.record(seconds)
        due = self.tuner.observe(seconds)
        if self.tuner.since % self.tuner.every == 0 and self.agree(int(due)):
            self.trial = ThreadTrial(self.candidates, self.recheck_repeats, warm=False)
        return None

    def settle(self, choice: ThreadChoice) -> None:
        """Run at ``choice.threads`` from now on; the tuner's reference is its measured time."""
        self.trial, self.choice = None, choice
        self.tuner.chosen(choice)
