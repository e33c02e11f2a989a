"""vicreg tune through the CLI, in-process, on tiny data: a real study of two short trials, and its help."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_cli, tiny_npz
from vicreg.cli import parse_tune_args

TINY = [
    "--batch-size", "16", "--device", "cpu", "--log-every", "1", "--no-progress", "--workers", "0",
    "--views.size", "16", "--model.backbone", "small_cnn", "--model.expander", "32-32", "--model.width", "4",
    "--label-free-every", "2", "--label-free-rows", "40",
]  # fmt: skip


def test_tune_help_explains_the_command() -> None:
    done = run_cli("tune", "--help")
    assert done.returncode == 0
    words = " ".join(done.stdout.split())
    for flag in ("--budget-minutes", "--trial-minutes", "--storage", "--study", "--then-train", "--space", "--log"):
        assert flag in words
    assert "without labels" in words and "vicreg tune --preset fashion-mnist-cpu" in words
    assert "tune" in run_cli("--help").stdout


def test_tune_flags_and_training_flags_are_told_apart(tmp_path: Path) -> None:
    settings, base = parse_tune_args(
        ["--preset", "wine-mlp", "--out", str(tmp_path / "s"), "--budget-minutes=3", "--trial-minutes", "1",
         "--then-train", "--seed", "4", "--optim.base-lr", "0.02", "--label-free-every", "7"]
    )  # fmt: skip
    assert settings.out == tmp_path / "s" and settings.budget_minutes == 3 and settings.trial_minutes == 1
    assert settings.then_train and settings.seed == 4
    assert base.data == "sklearn:wine" and base.optim.base_lr == 0.02 and base.label_free_every == 7
    bad = run_cli("tune", "--preset", "wine-mlp", "--trial-minutes", "9", "--budget-minutes", "3")
    assert bad.returncode == 1 and bad.stderr.startswith("vicreg tune: ") and "exceeds" in bad.stderr


@pytest.mark.slow
def test_tune_runs_a_study_of_two_trials_and_writes_best_yaml(tmp_path: Path) -> None:
    data = tiny_npz(tmp_path / "tiny.npz")
    study = tmp_path / "study"
    space = tmp_path / "space.yaml"
    space.write_text("defaults: false\noptim.base_lr: {low: 0.05, high: 0.5, log: true}\n")
    done = run_cli(
        "tune", "--data", data, *TINY, "--out", study, "--budget-minutes", "5", "--trial-minutes", "0.05",
        "--n-trials", "2", "--space", space, "--seed", "0", "--study", "tiny",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "study 'tiny': 2 trials" in done.stdout and "best.yaml" in done.stdout
    rows = list(csv.DictReader((study / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert all(float(r["score"]) > 1 for r in rows)  # LiDAR of a trained encoder
    assert all(r["accuracy.knn_top1"] for r in rows)  # labelled data: kNN for the table only
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert 0.05 <= best["optim"]["base_lr"] <= 0.5 and best["data"] == str(data)
    trial = study / "trials" / "0000"
    logged = [json.loads(line) for line in (trial / "metrics.jsonl").open()]
    assert any("label_free.lidar" in row for row in logged)  # the pruner's reports, logged by the trial
    assert (study / "study.db").is_file() and (study / "score.png").is_file()
    again = run_cli("tune", "--data", data, *TINY, "--out", study, "--budget-minutes", "5", "--trial-minutes",
                    "0.05", "--n-trials", "1", "--space", space, "--study", "tiny")  # fmt: skip
    assert again.returncode == 0 and "(2 earlier trials)" in again.stdout  # the same command continues the study
