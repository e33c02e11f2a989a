"""Resume is explicit about what changed (issue 26 point 3), through the CLI in-process: other data of the same
shape is refused (accepted and announced with --resume-with-new-data), a new learning rate is refused listing
only that field, and a longer --max-steps is announced, recorded in resumes.jsonl and written to config.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.helpers import run_cli, tiny_npz, train_args


def _train(data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli(*train_args(data, out, "--knn-every", "0", "--model.expander", "16-16", *extra)[3:])


def test_other_data_of_the_same_shape_is_refused_unless_asked_for(tmp_path: Path) -> None:
    data, other = tiny_npz(tmp_path / "a.npz", n=32), tiny_npz(tmp_path / "b.npz", n=32, seed=1)
    out = tmp_path / "run"
    assert _train(data, out, "--max-steps", "2").returncode == 0
    refused = _train(other, out, "--max-steps", "4")
    assert refused.returncode == 1
    line = refused.stderr.strip().splitlines()[-1]
    assert "resuming would change data.sample_hash" in line and "--resume-with-new-data" in line, line
    assert "max_steps" not in line  # allowed changes are not listed among the refused ones
    assert not (out / "resumes.jsonl").exists()

    done = _train(other, out, "--max-steps", "4", "--resume-with-new-data")
    assert done.returncode == 0, done.stderr
    assert "resuming with changes:" in done.stdout + done.stderr
    row = json.loads((out / "resumes.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 2 and {c["field"] for c in row["changes"]} >= {"data", "data.sample_hash", "max_steps"}
    assert "resume_with_new_data" not in {c["field"] for c in row["changes"]}  # about this resume, not the run
    assert yaml.safe_load((out / "config.yaml").read_text())["data"] == str(other)


def test_a_new_learning_rate_is_refused_naming_only_it(tmp_path: Path) -> None:
    data, out = tiny_npz(tmp_path / "a.npz", n=32), tmp_path / "run"
    assert _train(data, out, "--max-steps", "2").returncode == 0
    refused = _train(data, out, "--max-steps", "2", "--optim.base-lr", "5")
    assert refused.returncode == 1
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.endswith("resuming would change optim.base_lr 0.2 -> 5.0; use the same values, or another --out"), line


def test_a_longer_max_steps_is_announced_recorded_and_kept_in_config_yaml(tmp_path: Path) -> None:
    data, out = tiny_npz(tmp_path / "a.npz", n=32), tmp_path / "run"
    assert _train(data, out, "--max-steps", "2").returncode == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 2
    done = _train(data, out, "--max-steps", "3")
    assert done.returncode == 0, done.stderr
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("resuming with changes")]
    assert said == ["resuming with changes: max_steps 2 -> 3"], done.stdout + done.stderr
    rows = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 2
    assert rows[0]["changes"] == [{"field": "max_steps", "old": 2, "new": 3}] and rows[0]["time"]
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 3
    again = _train(data, out, "--max-steps", "3")  # a resume without changes is recorded too, without a line
    assert again.returncode == 0 and "resuming with changes" not in again.stdout + again.stderr
    assert json.loads((out / "resumes.jsonl").read_text().splitlines()[-1]) == {
        "step": 3,
        "time": json.loads((out / "resumes.jsonl").read_text().splitlines()[-1])["time"],
        "changes": [],
    }
