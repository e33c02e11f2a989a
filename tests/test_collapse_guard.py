"""The collapse guard (``--on-collapse``): a blow-up (NaN/inf loss) or a collapse (the embeddings' per-dimension
std below ``collapse_std``) rolls back to the last good checkpoint at half the learning rate, says so in one line
and in metrics.jsonl, and gives up after ``max_rollbacks``; ``stop`` keeps the old behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import run_cli, tiny_config
from vicreg.checkpoint import load_checkpoint, read_backbone_state
from vicreg.config import OptimConfig
from vicreg.loss import VICRegOutput, vicreg_loss
from vicreg.train import CollapseError, NonFiniteLossError, train


def _nan_at(*calls: int) -> Any:
    """The VICReg loss, NaN at the given calls (0-based: call k is the k-th step the process runs)."""
    count = {"n": 0}

    def objective(z_a: torch.Tensor, z_b: torch.Tensor) -> VICRegOutput:
        out = vicreg_loss(z_a, z_b, check_finite=False)
        n, count["n"] = count["n"], count["n"] + 1
        if n in calls:
            return VICRegOutput(out.loss * float("nan"), out.invariance, out.variance, out.covariance)
        return out

    return objective


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _finite_backbone(run: Path) -> bool:
    return all(torch.isfinite(v).all() for v in read_backbone_state(run / "backbone.safetensors").values())


def test_rollback_recovers_from_a_nan_and_halves_the_learning_rate(tmp_path: Path, capsys: Any) -> None:
    cfg = tiny_config(tmp_path, ckpt_every=4, log_every=2, knn_every=0)  # 12 steps
    result = train(cfg, objective=_nan_at(5))  # step 5 blows up; seen at the log line of step 6
    assert result.step == 12
    assert _finite_backbone(cfg.out)
    rows = _rows(cfg.out)
    rollbacks = [r for r in rows if "rollback" in r]
    assert len(rollbacks) == 1
    rb = rollbacks[0]["rollback"]
    assert rb["restored_step"] == 4 and rb["detected_at"] == 6 and rb["lr_scale"] == 0.5 and rb["number"] == 1
    assert "non-finite at step 5" in rb["reason"] and rb["restored_from"].endswith("last.pt")
    # the blown-up steps left the log; steps 6.. were logged again, once each
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [2, 4, 6, 8, 10, 12]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    # the learning rate is half that of the same run without a blow-up, and the checkpoint keeps the factor
    clean = tiny_config(tmp_path / "clean", ckpt_every=4, log_every=2, knn_every=0)
    train(clean)
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
    clean_lr = {r["step"]: r["lr"] for r in _rows(clean.out) if "lr" in r}
    assert lr[4] == pytest.approx(clean_lr[4]) and lr[10] == pytest.approx(0.5 * clean_lr[10])
    state = load_checkpoint(cfg.out / "checkpoints" / "last.pt")
    assert state["lr_scale"] == 0.5 and state["rollbacks"] == 1
    out = capsys.readouterr().out
    assert "rollback 1/3: the loss became non-finite at step 5" in out and "learning rate x0.5" in out


def test_rollback_before_the_first_checkpoint_restores_the_starting_state(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, ckpt_every=100, log_every=3, knn_every=0)
    result = train(cfg, objective=_nan_at(1))
    assert result.step == 12 and _finite_backbone(cfg.out)
    (row,) = [r["rollback"] for r in _rows(cfg.out) if "rollback" in r]
    assert row["restored_step"] == 0 and row["restored_from"] == "the state the run started from"


def test_a_resumed_run_keeps_the_lowered_learning_rate(tmp_path: Path, capsys: Any) -> None:
    cfg = tiny_config(tmp_path, ckpt_every=4, log_every=2, knn_every=0, max_steps=8)
    train(cfg, objective=_nan_at(5))
    capsys.readouterr()
    train(tiny_config(tmp_path, ckpt_every=4, log_every=2, knn_every=0))  # resumes at step 8, to 12
    assert "learning rate x0.5 after 1 rollback(s)" in capsys.readouterr().out
    assert load_checkpoint(cfg.out / "checkpoints" / "last.pt")["lr_scale"] == 0.5


def test_stop_keeps_the_clear_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, ckpt_every=4, log_every=2, knn_every=0, on_collapse="stop")
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 5 .*last good checkpoint is kept") as err:
        train(cfg, objective=_nan_at(5))
    assert "rollback" not in str(err.value)
    assert not [r for r in _rows(cfg.out) if "rollback" in r]
    assert load_checkpoint(cfg.out / "checkpoints" / "last.pt")["step"] == 4


def test_gives_up_after_max_rollbacks(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, ckpt_every=4, log_every=2, knn_every=0, max_rollbacks=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step \d+ .*gave up after 2 rollback\(s\)"):
        train(cfg, objective=_nan_at(*range(5, 100)))  # every step from step 5 on
    rows = [r["rollback"] for r in _rows(cfg.out) if "rollback" in r]
    assert [r["number"] for r in rows] == [1, 2] and [r["lr_scale"] for r in rows] == [0.5, 0.25]
    # the step-4 checkpoint gave the second blow-up's loss: the second rollback went further back
    assert [r["restored_step"] for r in rows] == [4, 0]
    state = load_checkpoint(cfg.out / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_collapse_is_detected_and_rolled_back(tmp_path: Path) -> None:
    """A threshold above any real std makes every log line a collapse: one rollback, then the clear error."""
    cfg = tiny_config(tmp_path, ckpt_every=4, log_every=2, knn_every=0, collapse_std=1e6, max_rollbacks=1)
    with pytest.raises(CollapseError, match=r"collapsed at step 2 .*gave up after 1 rollback"):
        train(cfg)
    (row,) = [r["rollback"] for r in _rows(cfg.out) if "rollback" in r]
    assert "collapsed at step 2" in row["reason"] and row["restored_step"] == 0
    stop = tiny_config(tmp_path / "stop", knn_every=0, collapse_std=1e6, on_collapse="stop")
    with pytest.raises(CollapseError, match="per-dimension std"):
        train(stop)


def test_a_learning_rate_that_blows_up_is_rolled_back_until_it_trains(tmp_path: Path) -> None:
    """A real blow-up: LARS at base rate 1000 goes to inf/NaN within a few steps (100 trains); a few halvings
    later the run trains to the end."""
    cfg = tiny_config(
        tmp_path, ckpt_every=4, log_every=2, knn_every=0, epochs=4, max_rollbacks=5,
        optim=OptimConfig(name="lars", base_lr=1000.0, warmup_epochs=0.0),
    )  # fmt: skip
    result = train(cfg)
    assert result.step == 24 and _finite_backbone(cfg.out)
    rows = [r["rollback"] for r in _rows(cfg.out) if "rollback" in r]
    assert rows and rows[-1]["lr_scale"] == 0.5 ** len(rows)


def test_cli_flag_and_its_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    got = run_cli("train", "--data", cfg.data, "--out", str(tmp_path / "r"), "--on-collapse", "never")
    assert got.returncode != 0 and "on-collapse" in got.stderr
