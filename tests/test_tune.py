"""vicreg tune (vicreg.tune) with a fake trainer: fast, deterministic scores from the parameters, a fake clock."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from tests.helpers import subprocess_env
from vicreg.config import PRESETS, TrainConfig, load_config_file
from vicreg.tune import (
    Report,
    TrialOutcome,
    TuneSettings,
    apply_params,
    default_space,
    load_space,
    run_tune,
)

BASE = PRESETS["fashion-mnist-cpu"]
REPORTS = 5
STEPS = 50


def quality(cfg: TrainConfig) -> float:
    """A smooth made-up score: best at base lr 2 and crop scale minimum 0.3."""
    return 20.0 - math.log(cfg.optim.base_lr / 2.0) ** 2 - 10 * (cfg.views.crop_scale_min - 0.3) ** 2


class FakeTrainer:
    """Reports the score growing linearly over REPORTS reports and stops when told; records what it trained."""

    def __init__(self, clock: FakeClock | None = None, diverge_above_lr: float = math.inf) -> None:
        self.clock, self.diverge_above_lr = clock, diverge_above_lr
        self.configs: list[TrainConfig] = []
        self.stopped_at: list[int] = []

    def __call__(self, cfg: TrainConfig, report: Report) -> TrialOutcome:
        self.configs.append(cfg)
        if self.clock is not None:
            self.clock.now += 60 * (cfg.budget_minutes or 0)
        if cfg.optim.base_lr > self.diverge_above_lr:
            raise FloatingPointError("loss is nan at step 7 (invariance); lower --optim.base-lr")
        final = quality(cfg)
        for k in range(1, REPORTS + 1):
            step = k * STEPS // REPORTS
            if report(step, {"lidar": final * k / REPORTS, "rankme": 50.0}):
                self.stopped_at.append(step)
                return TrialOutcome({"lidar": final * k / REPORTS}, steps=step, pruned=True)
        return TrialOutcome({"lidar": final, "rankme": 50.0}, accuracy={"knn_top1": 70 + final}, steps=STEPS)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(tmp_path: Path, **kw: object) -> TuneSettings:
    base = {"out": tmp_path / "study", "budget_minutes": 1000.0, "trial_minutes": 1.0, "seed": 0, "prune": False}
    return TuneSettings(**{**base, **kw})  # type: ignore[arg-type]


def _quiet(text: str) -> None:
    pass


def _study(tmp_path: Path, name: str = "study") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")


# ------------------------------------------------------------------------------------------------ search space


def test_the_default_space_is_valid_around_a_preset() -> None:
    space = default_space(BASE)
    assert set(space) == {
        "optim.base_lr",
        "loss.std_coeff",
        "loss.cov_coeff",
        "expander_width",
        "views.crop_scale_min",
        "optim.weight_decay",
    }
    assert space["optim.base_lr"].log and space["optim.base_lr"].low == BASE.optim.base_lr / 16
    assert space["expander_width"].choices == (512, 1024, 2048)
    cfg = apply_params(BASE, {"expander_width": 512, "optim.base_lr": 1.5})
    assert cfg.model.expander == "512-512-512" and cfg.optim.base_lr == 1.5
    assert "table_views.corrupt_rate" in default_space(PRESETS["wine-mlp"])


def test_a_space_file_overrides_adds_and_fixes(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "optim.base_lr: {low: 0.5, high: 8, log: true}\n"
        "optim.name: {choices: [lars, adamw]}\n"
        "loss.cov_coeff: 2.0\n"
        "views.crop_scale_min: {low: 0.1, high: 0.5, step: 0.1}\n"
        "epochs: {low: 2, high: 6}\n"
    )
    space = load_space(path, BASE)
    assert space["optim.base_lr"].low == 0.5 and space["optim.name"].choices == ("lars", "adamw")
    assert space["loss.cov_coeff"].fixed == 2.0 and space["epochs"].integer
    assert "optim.weight_decay" in space  # the defaults stay
    path.write_text("defaults: false\noptim.base_lr: {low: 0.5, high: 8}\n")
    assert list(load_space(path, BASE)) == ["optim.base_lr"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim.lr: {low: 1, high: 2}", r"'optim.lr' is not a training config key"),
        ("optim: {low: 1, high: 2}", r"'optim' is a section"),
        ("optim.base_lr: {low: 2, high: 1}", r"low \(2\) must be below high \(1\)"),
        ("optim.base_lr: {low: 0, high: 1, log: true}", r"log range needs low > 0"),
        ("optim.base_lr: {low: 1}", r"a range needs low and high"),
        ("optim.base_lr: {low: 1, high: 2, scale: log}", r"unknown field 'scale'"),
        ("optim.name: {choices: [lars, adam]}", r"optim.name.*must be one of"),
        ("views.crop_scale_min: {low: 0.1, high: 1.5}", r"crop_scale_min must be in \(0, 1\]"),
        ("defaults: false\nloss.cov_coeff: 1.0", r"leaves nothing to search"),
        ("- optim.base_lr", r"must map config keys to ranges"),
    ],
)
def test_a_bad_space_file_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=message) as err:
        load_space(path, BASE)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="--trial-minutes 10 exceeds --budget-minutes 5"):
        TuneSettings(budget_minutes=5, trial_minutes=10)
    with pytest.raises(ValueError, match="unknown --criterion 'knn'"):
        TuneSettings(criterion="knn")
    with pytest.raises(ValueError, match="unknown tracker"):
        TuneSettings(log="tensorboard,comet")


# ------------------------------------------------------------------------------------------------ the study


def test_the_sampler_runs_and_writes_the_study_folder(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    result = run_tune(_settings(tmp_path, n_trials=6), BASE, trainer, say=_quiet)
    folder = tmp_path / "study"
    assert result.trials == 6 and len(trainer.configs) == 6
    assert all(c.budget_minutes == 1.0 and c.out.parent == folder / "trials" for c in trainer.configs)
    assert len({c.optim.base_lr for c in trainer.configs}) == 6
    assert result.best_value == max(quality(c) for c in trainer.configs)
    for name in ("study.db", "trials.csv", "trials.md", "best.yaml", "score.png", "importance.png"):
        assert (folder / name).is_file(), name
    csv = (folder / "trials.csv").read_text().splitlines()
    assert csv[0].startswith("trial,state,score,minutes,steps,") and "accuracy.knn_top1" in csv[0]
    assert len(csv) == 7 and all(",complete," in line for line in csv[1:])

    best = load_config_file(folder / "best.yaml")  # what vicreg train --config reads
    assert best == replace(apply_params(BASE, result.best_params), out=folder / "best")
    assert best.optim.base_lr == trainer.configs[result.best_number or 0].optim.base_lr

    again = FakeTrainer()  # the same seed in a new study proposes the same configurations
    run_tune(_settings(tmp_path / "b", n_trials=6), BASE, again, say=_quiet)
    assert [c.optim.base_lr for c in again.configs] == [c.optim.base_lr for c in trainer.configs]


def test_trials_start_while_one_more_fits_in_the_budget(tmp_path: Path) -> None:
    clock = FakeClock()
    trainer = FakeTrainer(clock)
    run_tune(_settings(tmp_path, budget_minutes=10.0, trial_minutes=3.0), BASE, trainer, clock=clock, say=_quiet)
    assert len(trainer.configs) == 3  # at 0, 3 and 6 minutes; at 9 a fourth would end after 10


def test_pruning_stops_trials_below_the_median(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    settings = _settings(tmp_path, n_trials=12, prune=True, prune_startup_trials=2, prune_after_reports=1)
    run_tune(settings, BASE, trainer, say=_quiet)
    study = _study(tmp_path)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and len(trainer.stopped_at) == len(pruned)
    assert all(step < STEPS for step in trainer.stopped_at)
    assert all(t.number >= 2 and len(t.intermediate_values) >= 2 for t in pruned)
    assert "pruned" in (tmp_path / "study" / "trials.md").read_text()


def test_a_diverged_trial_is_ranked_below_the_finished_ones(tmp_path: Path) -> None:
    trainer = FakeTrainer(diverge_above_lr=BASE.optim.base_lr)
    run_tune(_settings(tmp_path, n_trials=8), BASE, trainer, say=_quiet)
    study = _study(tmp_path)
    diverged = [t for t in study.trials if "diverged" in t.user_attrs]
    assert diverged and all(t.state == optuna.trial.TrialState.PRUNED for t in diverged)
    assert "loss is nan" in diverged[0].user_attrs["diverged"]
    assert ",diverged," in (tmp_path / "study" / "trials.csv").read_text()


def test_rerunning_continues_the_same_study(tmp_path: Path) -> None:
    first = run_tune(_settings(tmp_path, n_trials=3), BASE, FakeTrainer(), say=_quiet)
    lines: list[str] = []
    trainer = FakeTrainer()
    second = run_tune(_settings(tmp_path, n_trials=2, seed=1), BASE, trainer, say=lines.append)
    assert first.study == second.study == "study" and second.trials == 5
    assert "(3 earlier trials)" in lines[0]
    assert [c.out.name for c in trainer.configs] == ["0003", "0004"]


def test_then_train_trains_the_best_for_the_rest_of_the_budget(tmp_path: Path) -> None:
    clock = FakeClock()
    trainer = FakeTrainer(clock)
    settings = _settings(tmp_path, budget_minutes=10.0, trial_minutes=2.0, then_train=True, final_minutes=3.0)
    result = run_tune(settings, BASE, trainer, clock=clock, say=_quiet)
    *trials, final = trainer.configs
    assert len(trials) == 3  # 0, 2, 4 -> 6 minutes; a fourth would cut into the final 3
    assert final.out == tmp_path / "study" / "final" and final.budget_minutes == pytest.approx(4.0)
    assert final.optim.base_lr == trials[result.best_number or 0].optim.base_lr
    assert result.final is not None and result.final.steps == STEPS


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_trial_left_running_by_a_dead_process_is_failed_and_retried_in_its_folder(tmp_path: Path) -> None:
    run_tune(_settings(tmp_path, n_trials=1), BASE, FakeTrainer(), say=_quiet)
    study = _study(tmp_path)
    orphan = study.ask({"optim.base_lr": optuna.distributions.FloatDistribution(0.25, 16, log=True)})
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", _dead_pid())
    orphan.set_user_attr("run", str(tmp_path / "study" / "trials" / "0001"))
    lines: list[str] = []
    trainer = FakeTrainer()
    run_tune(_settings(tmp_path, n_trials=1), BASE, trainer, say=lines.append)
    states = {t.number: t.state for t in _study(tmp_path).trials}
    assert states[1] == optuna.trial.TrialState.FAIL and states[2] == optuna.trial.TrialState.COMPLETE
    assert any("trial 1 was left running by process" in line for line in lines)
    assert trainer.configs[0].out == tmp_path / "study" / "trials" / "0001"  # resumes the killed run's folder
    assert trainer.configs[0].optim.base_lr == orphan.params["optim.base_lr"]


# ------------------------------------------------------------------------------------------------ processes

WORKER = """
import math, sys, time
from pathlib import Path
from vicreg.config import PRESETS
from vicreg.tune import TrialOutcome, TuneSettings, run_tune

folder, n, hang_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
count = 0

def train_fn(cfg, report):
    global count
    count += 1
    (folder.parent / f"started-{cfg.out.name}").write_text("")
    if count == hang_at:
        time.sleep(3600)
    time.sleep(0.2)
    report(10, {"lidar": 1.0})
    return TrialOutcome({"lidar": 10 - math.log(cfg.optim.base_lr) ** 2}, steps=10)

settings = TuneSettings(out=folder, budget_minutes=1000, trial_minutes=1, n_trials=n, prune=False)
run_tune(settings, PRESETS["fashion-mnist-cpu"], train_fn, say=lambda text: None)
"""


def _worker(tmp_path: Path, n: int, hang_at: int = 0) -> subprocess.Popen[bytes]:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    args = [sys.executable, str(script), str(tmp_path / "study"), str(n), str(hang_at)]
    return subprocess.Popen(args, env=subprocess_env(), stderr=subprocess.PIPE)


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    (tmp_path / "study").mkdir()
    procs = [_worker(tmp_path, 3), _worker(tmp_path, 3)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    trials = _study(tmp_path).trials
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    assert sorted(p.name for p in tmp_path.glob("started-*")) == [f"started-{i:04d}" for i in range(6)]


@pytest.mark.slow
def test_kill_9_loses_only_the_running_trial_and_the_next_run_continues(tmp_path: Path) -> None:
    proc = _worker(tmp_path, 5, hang_at=3)
    deadline = time.monotonic() + 600  # a guard only
    while not (tmp_path / "started-0002").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "the worker never reached its third trial"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    states = [t.state for t in _study(tmp_path).trials]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE] * 2 and states[2] == optuna.trial.TrialState.RUNNING

    trainer = FakeTrainer()
    result = run_tune(_settings(tmp_path, n_trials=2, seed=None), BASE, trainer, say=_quiet)
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trainer.configs[0].out.name == "0002"  # the retried trial resumes the killed trial's folder
    assert trials[3].params == trials[2].params
    assert result.trials == 5
