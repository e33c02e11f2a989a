"""The thread count chosen by measurement: decisions tested with an injected timer, never with the real clock."""

from __future__ import annotations

import pytest

from vicreg.threads import ThreadChoice, ThreadTuner, candidate_counts, choose_threads, default_threads


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
    assert choice.words() == "1 thread (measured: 1 -> 0.5 s, 2 -> 0.6 s per step)"


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
