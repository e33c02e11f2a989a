"""Time budgets (--budget-minutes): the total that fits, the schedule it spans, a run that ends on time and a
resumed run that keeps its total. The clock is injected (a fake one that moves only when a step, a monitor or a
checkpoint says so): no verdict here depends on the machine's speed or load."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import vicreg.train as train_module
from tests.helpers import REPO, free_port, tiny_npz
from vicreg.budget import (
    BUDGET_MARGIN,
    MEASURE_FRACTION,
    MEASURE_MAX_S,
    MEASURED_STEPS,
    WARM_STEPS,
    Budget,
    Schedule,
    budget_total,
    plan_schedule,
)
from vicreg.checkpoint import load_checkpoint
from vicreg.config import ModelConfig, OptimConfig, TrainConfig, ViewsConfig
from vicreg.loss import VICRegOutput, vicreg_loss
from vicreg.optim import scaled_lr, warmup_cosine
from vicreg.runlog import RunLog
from vicreg.train import train


def _naive_cost(step: int, total: int, step_s: float, spe: int, knn_every: int, mon_s: float, ce: int, ck_s: float):
    """Walk the steps step+1 .. total as the loop does and add up what each one costs."""
    cost = 0.0
    for s in range(step + 1, total + 1):
        cost += step_s
        if knn_every > 0 and s % spe == 0 and (s // spe) % knn_every == 0:
            cost += mon_s
        if s % ce == 0 and s != total:
            cost += ck_s
    return cost + 2 * ck_s  # the final checkpoint and the backbone export


def test_budget_total_is_the_largest_total_that_fits() -> None:
    rng = random.Random(0)
    for _ in range(300):
        step, spe, ke, ce = rng.randrange(0, 50), rng.randrange(1, 20), rng.randrange(0, 3), rng.randrange(1, 30)
        step_s, mon_s, ck_s = rng.uniform(0.01, 1), rng.uniform(0, 5), rng.uniform(0, 2)
        seconds = rng.uniform(0, 60)
        kw = {"steps_per_epoch": spe, "knn_every": ke, "monitor_s": mon_s, "ckpt_every": ce, "ckpt_s": ck_s}
        got = budget_total(step, seconds, step_s, **kw)
        assert got >= step
        if got > step:
            assert _naive_cost(step, got, step_s, spe, ke, mon_s, ce, ck_s) <= seconds + 1e-9
        assert _naive_cost(step, got + 1, step_s, spe, ke, mon_s, ce, ck_s) > seconds - 1e-9


def _tiny(root: Path, **overrides) -> TrainConfig:
    root.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        out=root / "run",
        data=str(tiny_npz(root / "tiny.npz")),
        epochs=1,
        batch_size=16,
        device="cpu",
        log_every=5,
        ckpt_every=40,
        knn_every=4,
        progress=False,
        threads=1,  # the budget times every step from the third (a measured thread count would time later)
        views=ViewsConfig(size=16),
        model=ModelConfig(backbone="small_cnn", expander="32-32", width=4),
        optim=OptimConfig(name="lars", base_lr=0.2, warmup_epochs=2),
    )
    return replace(cfg, **overrides)


def _plan(epochs: int, budget: float | None, stored: dict | None = None, resumed: bool = False) -> Schedule:
    return plan_schedule(
        epochs=epochs, steps_per_epoch=10, warmup_epochs=1.5, budget_minutes=budget, stored=stored, resumed=resumed
    )


def test_plan_schedule() -> None:
    assert _plan(3, None) == Schedule(30, 15, None)
    assert _plan(3, 2.0) == Schedule(None, 15, 2.0)
    stored = {"total": 77, "warmup": 9, "budget_minutes": 2.0}
    for budget in (2.0, 9.0, None):  # never re-measured
        assert _plan(3, budget, stored, resumed=True) == Schedule(77, 9, 2.0)
    # killed while measuring: measure again
    assert _plan(3, None, {**stored, "total": None}, resumed=True) == Schedule(None, 15, 2.0)
    with pytest.raises(ValueError, match="started without --budget-minutes"):
        _plan(3, 2.0, {"total": 30, "warmup": 15, "budget_minutes": None}, resumed=True)
    assert Schedule(None, 15, 2.0).with_total(20) == Schedule(20, 10, 2.0)  # the warm-up: at most half
    assert Schedule(None, 15).last_step(None) == sys.maxsize and Schedule(None, 15).last_step(9) == 9
    assert Schedule(30, 15).last_step(None) == 30 and Schedule(30, 15).last_step(12) == 12


class FakeClock:
    """A clock that moves only when told to: the test decides what each step, monitor and checkpoint costs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> float:
        self.now += seconds
        return seconds


def test_the_budget_times_the_steps_after_the_warm_ones_without_monitors_and_checkpoints() -> None:
    clock = FakeClock()
    clock.tick(4.0)  # setup before the first step: spent, but not a step
    budget = Budget(1.0, 0.0, 10, steps_per_epoch=6, knn_every=0, ckpt_every=1000, clock=clock)  # resumed at 10
    window = min(MEASURE_MAX_S, MEASURE_FRACTION * 60)  # 3 s of a 1-minute budget
    decided = None
    for step in range(11, 100):
        clock.tick(2.0 if step <= 10 + WARM_STEPS else 0.25)  # the warm steps are slow: not timed
        if step == 15:
            budget.spent_on_checkpoint(clock.tick(1.5))  # inside the window: timed on its own
        budget.begin(step)
        if (step_s := budget.step_s(step)) is not None:
            decided = step, step_s
            break
    # enough steps (MEASURED_STEPS) and enough seconds (the window): 12 steps of 0.25 s after the warm ones
    assert decided == (10 + WARM_STEPS + round(window / 0.25), 0.25)
    assert budget.ckpt_s == 1.5 and budget.monitor_s is None
    assert budget.left_s() == pytest.approx(60 * (1 - BUDGET_MARGIN) - clock.now)


def test_the_budget_needs_at_least_the_measured_steps() -> None:
    clock = FakeClock()
    budget = Budget(100.0, 0.0, 0, steps_per_epoch=6, knn_every=0, ckpt_every=1000, clock=clock)
    ready = []
    for step in range(1, 40):
        clock.tick(40.0)  # slow steps: the time window is over after one of them
        budget.begin(step)
        ready.append(budget.step_s(step))
    first = next(i for i, s in enumerate(ready, start=1) if s is not None)
    assert first == WARM_STEPS + MEASURED_STEPS and ready[first - 1] == 40.0
    assert not Budget.too_short(0, WARM_STEPS + MEASURED_STEPS + 1) and Budget.too_short(0, WARM_STEPS + MEASURED_STEPS)


def test_the_budget_decides_with_a_timed_monitor_and_checkpoint() -> None:
    clock = FakeClock()
    budget = Budget(0.1, 0.0, 0, steps_per_epoch=6, knn_every=4, ckpt_every=20, clock=clock)
    clock.tick(0.875)  # 7 steps of 0.125 s
    guesses: list[int] = []

    def time_checkpoint(guess: int) -> float:
        guesses.append(guess)
        return clock.tick(0.5)

    total = budget.decide(7, 0.125, lambda: clock.tick(1.0), time_checkpoint)
    left = 6.0 * (1 - BUDGET_MARGIN)
    # the guess counts the steps only: 7 + (5.82 - 0.875) // 0.125 = 46 > 24, so the monitor at step 24 is due
    assert guesses == [7 + int((left - 0.875) / 0.125)] == [46]
    assert budget.monitor_s == 1.0 and budget.ckpt_s == 0.5 and clock.now == 0.875 + 1.0 + 0.5
    # then 5.82 - 2.375 s, less the checkpoint that stores the decision: steps 8..20 and two saves (the final
    # checkpoint and the backbone export) take 13 x 0.125 + 2 x 0.5 = 2.625 s; a 21st step would add a checkpoint
    assert total == 20
    cost = _naive_cost(7, total, 0.125, 6, 4, 1.0, 20, 0.5)
    assert clock.now + 0.5 + cost <= left < clock.now + 0.5 + _naive_cost(7, total + 1, 0.125, 6, 4, 1.0, 20, 0.5)

    capped = Budget(0.1, 0.0, 0, steps_per_epoch=6, knn_every=4, ckpt_every=20, max_steps=12, clock=FakeClock())
    assert capped.decide(7, 0.125, lambda: pytest.fail("no monitor before step 12"), lambda guess: 0.5) == 12


def test_the_steps_taken_while_measuring_follow_the_final_schedule() -> None:
    measuring = Schedule(None, 40, 1.0)
    for total in (80, 100, 1000):
        final = Schedule(total, 40, 1.0)
        for step in range(40):
            assert measuring.lr(step, 2.0, 0.001) == final.lr(step, 2.0, 0.001)


def test_a_budgeted_run_ends_on_time_and_its_resume_keeps_the_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real loop on a fake clock: each step costs 0.125 s, each checkpoint 0.5 s and each kNN monitor 1 s."""
    clock = FakeClock()
    real_save, real_knn = train_module.save_keeping, RunLog.knn
    monkeypatch.setattr(train_module, "save_keeping", lambda *a, **k: (clock.tick(0.5), real_save(*a, **k))[1])
    monkeypatch.setattr(RunLog, "knn", lambda self, *a: (clock.tick(1.0), real_knn(self, *a))[1])

    def ticking(z_a: torch.Tensor, z_b: torch.Tensor) -> VICRegOutput:
        clock.tick(0.125)
        return vicreg_loss(z_a, z_b)

    budget_s = 6.0
    cfg = _tiny(tmp_path / "a", budget_minutes=budget_s / 60, keep_checkpoints=100, ckpt_every=20, log_every=1)
    result = train(cfg, objective=ticking, clock=clock)
    out = capsys.readouterr().out
    # timed over steps 3-7, a monitor and a checkpoint timed at step 7 (see the test above), then 20 steps fit
    state = load_checkpoint(cfg.out / "checkpoints" / "last.pt")
    total = state["schedule"]["total"]
    assert result.step == state["step"] == total == 20
    assert clock.now + 0.5 <= budget_s * (1 - BUDGET_MARGIN)  # the backbone export (one checkpoint's time) too
    assert f"budget: {budget_s / 60:g} minutes buy {total} steps" in out and "measured over the first 7" in out
    assert "--epochs 1 is ignored" in out
    # the schedule spans the total: a warm-up of 2 epochs (12 steps), at most half the total: 10
    rows = [r for r in _rows(cfg.out) if "lr" in r]
    peak = scaled_lr(0.2, 16)
    assert state["schedule"]["warmup"] == 10
    assert rows[-1]["step"] == total and math.isclose(rows[-1]["lr"], warmup_cosine(total - 1, total, 10, peak))
    assert max(r["lr"] for r in rows) == pytest.approx(peak)

    # resume a copy from the checkpoint that stored the decision, with another budget: the total is kept
    kept = cfg.out / "checkpoints" / "step_00000007.pt"
    assert load_checkpoint(kept)["schedule"]["total"] == total
    resumed = replace(cfg, out=tmp_path / "b" / "run", budget_minutes=5.0)
    (resumed.out / "checkpoints").mkdir(parents=True)
    shutil.copy(kept, resumed.out / "checkpoints" / "last.pt")
    shutil.copy(cfg.out / "config.yaml", resumed.out / "config.yaml")
    again = train(resumed, objective=ticking, clock=clock)
    out = capsys.readouterr().out
    assert f"resuming from {resumed.out / 'checkpoints' / 'last.pt'} at step 7" in out
    assert "budget:" not in out and f"{total} steps" in out  # not measured again
    assert again.step == total
    a, b = (load_checkpoint(c.out / "checkpoints" / "last.pt")["model"] for c in (cfg, resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_budget_under_torchrun_is_decided_once_for_every_rank(tmp_path: Path) -> None:
    """Two gloo processes time their steps differently; rank 0's decision is everyone's (else one would hang)."""
    data = tiny_npz(tmp_path / "d.npz", n=64)
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
        "-m", "vicreg", "train", "--data", str(data), "--out", str(out), "--device", "cpu", "--batch-size", "16",
        "--views.size", "16", "--model.backbone", "small_cnn", "--model.width", "4", "--model.expander", "32-32",
        "--log-every", "5", "--budget-minutes", "0.1", "--optim.warmup-epochs", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    # load-proof: the total is decided after at least the warm and measured steps, whatever they cost
    assert state["world_size"] == 2 and state["step"] == state["schedule"]["total"] >= WARM_STEPS + MEASURED_STEPS
    assert done.stdout.count("budget: 0.1 minutes buy") == 1  # rank 0 alone speaks
