"""Trackers (vicreg.trackers): what is logged is read back through each library's own client."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vicreg.trackers import (
    IDS_FILE,
    MLflowTracker,
    MultiTracker,
    TensorBoardTracker,
    WandbTracker,
    flatten,
    open_trackers,
    parse_backends,
)

PARAMS = {"optim": {"base_lr": 0.5, "name": "lars"}, "out": Path("runs/x")}


def _tb(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_flatten_and_backend_names() -> None:
    assert flatten(PARAMS) == {"optim.base_lr": 0.5, "optim.name": "lars", "out": "runs/x"}
    assert parse_backends("tensorboard, mlflow,mlflow") == ("tensorboard", "mlflow")
    assert parse_backends(["wandb"]) == ("wandb",)
    with pytest.raises(ValueError, match=r"unknown tracker 'neptune'.*tensorboard, mlflow, wandb"):
        parse_backends("tensorboard,neptune")


def test_tensorboard_scalars_params_and_children_read_back(tmp_path: Path) -> None:
    with TensorBoardTracker(tmp_path / "tb") as study:
        study.log_params(PARAMS)
        study.log_scalars({"score": 2.5, "note": "text", "flag": True, "bad": float("nan")}, step=3)
        trial = study.child("trial-0001", tmp_path / "trials" / "0001")
        trial.log_scalars({"lidar": 4.0}, step=10)
        trial.log_scalars({"lidar": 5.0}, step=20)
        trial.finish()
    acc = _tb(tmp_path / "tb")
    assert acc.Tags()["scalars"] == ["score"]
    assert [(e.step, e.value) for e in acc.Scalars("score")] == [(3, 2.5)]
    text = acc.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| optim.base_lr | 0.5 |" in text
    child = _tb(tmp_path / "tb" / "trial-0001")
    assert [(e.step, e.value) for e in child.Scalars("lidar")] == [(10, 4.0), (20, 5.0)]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating one runs MLflow's schema migrations (seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.slow
def test_mlflow_nested_runs_read_back_with_the_mlflow_client(tmp_path: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri
    study = MLflowTracker(tmp_path / "study", "study-a", uri=uri, experiment="tests")
    study.log_params(PARAMS)
    study.log_params(PARAMS)  # logging the same params again is harmless (a resumed run does)
    trial = study.child("trial-0000", tmp_path / "study" / "trials" / "0000")
    trial.log_scalars({"lidar": 3.0, "label": "x"}, step=5)
    trial.log_scalars({"lidar": 4.5}, step=10)
    trial.finish("failed")
    study.finish()

    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(trial.run_id, "lidar")  # type: ignore[attr-defined]
    assert [(m.step, m.value) for m in history] == [(5, 3.0), (10, 4.5)]
    child_run = client.get_run(trial.run_id)  # type: ignore[attr-defined]
    assert child_run.data.tags["mlflow.parentRunId"] == study.run_id
    assert child_run.info.status == "FAILED"
    parent = client.get_run(study.run_id)
    assert parent.data.params == {"optim.base_lr": "0.5", "optim.name": "lars", "out": "runs/x"}
    assert parent.info.run_name == "study-a" and parent.info.status == "FINISHED"

    again = MLflowTracker(tmp_path / "study", "study-a", uri=uri, experiment="tests")  # a re-run continues it
    assert again.run_id == study.run_id
    again.finish()
    assert json.loads((tmp_path / "study" / IDS_FILE).read_text()) == {f"mlflow:{uri}": study.run_id}


def _wandb_records(run_dir: Path) -> list[dict]:
    """The records of an offline run, through wandb's own reader of its transaction log (``wandb leet``)."""
    (log,) = run_dir.glob("run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    done = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_wandb_offline_runs_read_back_from_their_transaction_log(tmp_path: Path) -> None:
    study = WandbTracker(tmp_path / "study", "study-a", project="tests", group="study-a", job_type="study")
    trial = study.child("trial-0000", tmp_path / "study" / "trials" / "0000")
    trial.log_params(PARAMS)
    trial.log_scalars({"lidar": 3.0}, step=5)
    trial.log_scalars({"lidar": 4.5, "text": "no"}, step=10)
    trial.finish()
    study.log_scalars({"best": 4.5}, step=0)
    study.finish()

    records = _wandb_records(trial.run_dir)  # type: ignore[attr-defined]
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    assert [(h["_step"], h["lidar"]) for h in history] == [(5, 3.0), (10, 4.5)]
    (run,) = [r["run"] for r in records if r.get("type") == "run"]
    assert run["run_group"] == "study-a" and run["job_type"] == "trial" and run["display_name"] == "trial-0000"
    config: dict = {}
    for r in records:
        if r.get("type") in ("run", "config"):
            config.update(r[r["type"]].get("config", r[r["type"]]).get("update", {}))
    assert config["optim.base_lr"] == 0.5
    parent = _wandb_records(study.run_dir)  # type: ignore[attr-defined]
    assert any(r.get("type") == "history" and r["history"]["item"]["best"] == 4.5 for r in parent)


@pytest.mark.slow
def test_several_backends_at_once(tmp_path: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri
    trackers = open_trackers("tensorboard,mlflow", tmp_path / "run", "run-a", mlflow_uri=uri)
    assert isinstance(trackers, MultiTracker) and len(trackers.trackers) == 2
    with trackers:
        trackers.log_scalars({"loss": 1.5}, step=1)
    assert _tb(tmp_path / "run" / "tb").Scalars("loss")[0].value == 1.5
    mlflow_tracker = trackers.trackers[1]
    assert isinstance(mlflow_tracker, MLflowTracker)
    assert MlflowClient(uri).get_metric_history(mlflow_tracker.run_id, "loss")[0].value == 1.5


@pytest.mark.parametrize("backend, extra", [("mlflow", "vicreg[mlflow]"), ("wandb", "vicreg[wandb]")])
def test_a_missing_library_names_the_extra_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, backend, None)  # import fails as if it were not installed
    with pytest.raises(ImportError, match=re.escape(f"pip install '{extra}'")) as err:
        open_trackers(backend, tmp_path, "run")
    assert "\n" not in str(err.value)
