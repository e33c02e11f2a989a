"""The thread count chosen by measurement: decisions tested with an injected timer, never with the real clock."""

from __future__ import annotations

import pytest

from vicreg.threads import (
    StepThreads,
    ThreadChoice,
    ThreadTrial,
    ThreadTuner,
    candidate_counts,
    choose_threads,
    default_threads,
    fixed_threads,
)


def test_candidates_are_one_the_powers_of_two_and_the_limit() -> None:
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4, 6]
    assert candidate_counts(16) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match="at least 1"):
        candidate_counts(0)


def test_default_is_the_cores_shared_among_local_processes() -> None:
    assert default_threads(cores=16, local_processes=4) == 4
    assert default_threads(cores=2, local_processes=4) == 1
    assert default_threads(cores=8, local_processes=1) == 8


def test_default_reads_torchrun_local_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_threads(cores=8) == 4


def test_the_fastest_count_wins_and_ties_go_to_fewer_threads() -> None:
    busy_machine = {1: 0.81, 2: 1.51}  # one other busy process on 2 cores (benchmarks/README.md)
    assert choose_threads(busy_machine.__getitem__, [1, 2]).threads == 1
    idle = {1: 0.72, 2: 0.39}
    assert choose_threads(idle.__getitem__, [1, 2]).threads == 2
    assert choose_threads({1: 0.5, 2: 0.5}.__getitem__, [1, 2]).threads == 1


def test_candidates_are_timed_round_robin_and_the_median_decides() -> None:
    calls: list[int] = []
    noisy = {1: iter([0.5, 9.0, 0.5]), 2: iter([0.6, 0.6, 0.6])}  # one outlier at 1 thread

    def time_at(n: int) -> float:
        calls.append(n)
        return next(noisy[n])

    choice = choose_threads(time_at, [1, 2], repeats=3)
    assert calls == [1, 2, 1, 2, 1, 2]
    assert choice == ThreadChoice(1, {1: 0.5, 2: 0.6})
    assert choice.words() == "1 (measured: 1 -> 0.5 s, 2 -> 0.6 s per step)"
    assert choice.words("--threads N fixes it") == "1 (measured: 1 -> 0.5 s, 2 -> 0.6 s per step; --threads N fixes it)"
    assert choice.row() == {"threads": 1, "threads.seconds.1": 0.5, "threads.seconds.2": 0.6}


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="no thread counts"):
        choose_threads(lambda n: 1.0, [])
    with pytest.raises(ValueError, match="repeats"):
        choose_threads(lambda n: 1.0, [1], repeats=0)
    with pytest.raises(ValueError, match="drift"):
        ThreadTuner(drift=0)


def test_the_tuner_asks_again_only_after_a_drift_and_enough_steps() -> None:
    tuner = ThreadTuner(every=10, drift=0.25, window=4)
    assert not tuner.observe(1.0)  # nothing chosen yet
    tuner.chosen(ThreadChoice(2, {1: 0.8, 2: 0.4}))
    assert not any(tuner.observe(0.42) for _ in range(30))  # steady: never
    tuner.chosen(ThreadChoice(2, {1: 0.8, 2: 0.4}))
    slow = [tuner.observe(1.5) for _ in range(12)]  # another program took a core
    assert slow.index(True) == 9  # not before `every` steps since the choice
    tuner.chosen(ThreadChoice(1, {1: 0.8, 2: 1.5}))
    assert not tuner.observe(0.8)
    fast = [tuner.observe(0.3) for _ in range(12)]  # the other program ended: faster also triggers
    assert True in fast


def test_a_trial_warms_each_count_untimed_then_times_round_robin() -> None:
    trial = ThreadTrial([1, 2], repeats=2)
    seen, choice = [], None
    costs = {1: [9.0, 0.5, 0.7], 2: [9.0, 0.4, 0.6]}  # the warm round's 9 s are not counted
    while choice is None:
        n = trial.count()
        seen.append(n)
        choice = trial.record(costs[n].pop(0))
    assert seen == [1, 2, 1, 2, 1, 2]
    assert choice == ThreadChoice(2, {1: 0.6, 2: 0.5})


def test_step_threads_measure_settle_and_recheck_on_drift() -> None:
    verdicts: list[int] = []

    def agree(verdict: int) -> int:
        verdicts.append(verdict)
        return verdict

    cost = {1: 0.8, 2: 0.4}
    threads = StepThreads([1, 2], repeats=2, recheck_repeats=1, tuner=ThreadTuner(every=4, window=2), agree=agree)
    first = None
    for _ in range(6):  # warm round + 2 timed rounds
        assert threads.measuring
        first = threads.record(cost[threads.count()])
    assert first == ThreadChoice(2, {1: 0.8, 2: 0.4})
    threads.settle(first)
    assert not threads.measuring and threads.count() == 2
    for _ in range(8):  # steady: asked at every 4th step, never due
        assert threads.record(0.4) is None
    assert verdicts == [0, 0] and not threads.measuring
    cost = {1: 0.8, 2: 1.6}  # another program took a core
    for _ in range(4):
        threads.record(cost[threads.count()])
    assert verdicts[-1] == 1 and threads.measuring
    again = [threads.record(cost[threads.count()]) for _ in range(2)]  # one round, no warm-up
    assert again == [None, ThreadChoice(1, {1: 0.8, 2: 1.6})]


def test_rank_zero_verdict_decides_whether_to_recheck() -> None:
    threads = StepThreads([1, 2], repeats=1, tuner=ThreadTuner(every=2, window=2), agree=lambda verdict: 0)
    while (choice := threads.record(0.4)) is None:
        pass
    threads.settle(choice)
    for _ in range(10):
        threads.record(5.0)  # drifted here, but rank 0 says no
    assert not threads.measuring


def test_a_fixed_count_comes_from_threads_or_omp_outside_torchrun() -> None:
    assert fixed_threads(3, {}) == (3, "--threads")
    assert fixed_threads(3, {"OMP_NUM_THREADS": "1"}) == (3, "--threads")
    assert fixed_threads(None, {"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS")
    assert fixed_threads(None, {"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}) is None  # torchrun's own default
    assert fixed_threads(None, {"OMP_NUM_THREADS": ""}) is None
    assert fixed_threads(None, {}) is None
    with pytest.raises(ValueError, match="omit --threads"):
        fixed_threads(0, {})
