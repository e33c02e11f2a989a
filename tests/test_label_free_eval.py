"""Label-free measures in vicreg eval (labelled and unlabelled data), in training (metrics.jsonl, TensorBoard, the
report's figure, the report callback that stops a run) and the --log trackers of a training run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import run_cli, tiny_config
from vicreg.build import ImageKind, held_out_rows, labelled_splits, load_encoder
from vicreg.config import TrainConfig, config_to_dict
from vicreg.train import train

FAST_EVAL = ["--probe-epochs", "2", "--k", "5", "--fractions", "0.5", "--device", "cpu", "--label-free-rows", "30"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run that logs the label-free measures every 3 steps."""
    cfg = tiny_config(tmp_path_factory.mktemp("lf"), label_free_every=3, label_free_rows=40)
    train(cfg)
    return Path(cfg.out)


def test_training_logs_label_free_measures_to_metrics_and_tensorboard(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    logged = [r for r in rows if "label_free.rankme" in r]
    assert [r["step"] for r in logged] == [3, 6, 9, 12]
    for r in logged:
        assert r["label_free.rankme"] > 1 and r["label_free.lidar"] > 1 and "label_free.rankme_vs_init" in r
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("label_free/lidar")] == [3, 6, 9, 12]


def test_report_plots_the_label_free_measures(run: Path) -> None:
    assert run_cli("report", run, "--device", "cpu").returncode == 0
    md = (run / "report.md").read_text()
    assert "report/label_free.png" in md and (run / "report" / "label_free.png").stat().st_size > 1000


def test_a_report_callback_that_says_stop_saves_and_stops_the_run(tmp_path: Path) -> None:
    seen: list[tuple[int, dict[str, float]]] = []

    def report(step: int, scores: dict[str, float]) -> bool:
        seen.append((step, dict(scores)))
        return step >= 4

    result = train(tiny_config(tmp_path, label_free_every=2, label_free_rows=30), report=report)
    assert result.pruned and result.step == 4 and [s for s, _ in seen] == [2, 4]
    assert result.label_free == seen[-1][1] and "lidar" in result.label_free
    assert load_encoder(result.run_dir).step == 4  # saved at the step it stopped
    assert not (result.run_dir / "backbone.safetensors").exists()  # not a finished run


def test_eval_reports_label_free_measures_beside_the_probes_and_repeats_them(run: Path, tmp_path: Path) -> None:
    done = run_cli("eval", run, *FAST_EVAL, "--out", tmp_path / "a.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    section = report["label_free"]
    assert section["rows"] == 19 and "held out" in section["sample"]  # the seeded 20% of 96 rows, as the probes
    assert set(section["vicreg"]) == set(section["random_init"]) == {"rankme", "lidar", "alpha_req"}
    assert section["vs_init"]["rankme_vs_init"] == pytest.approx(
        section["vicreg"]["rankme"] / section["random_init"]["rankme"]
    )
    assert 0 <= section["cka_to_init"] <= 1 and report["results"]["vicreg"]["knn"]
    assert "rankme" in done.stdout and "random_init" in done.stdout and "label-free" in done.stdout
    assert run_cli("eval", run, *FAST_EVAL, "--out", tmp_path / "b.json").returncode == 0
    again = json.loads((tmp_path / "b.json").read_text())["label_free"]
    assert again["vicreg"] == section["vicreg"] and again["random_init"] == section["random_init"]  # seeded


def test_eval_on_unlabelled_data_reports_only_the_label_free_measures(run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "unlabelled.npz", images=rng.integers(0, 255, (60, 1, 16, 16), dtype=np.uint8))
    done = run_cli("eval", run, "--data", tmp_path / "unlabelled.npz", *FAST_EVAL, "--out", tmp_path / "u.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "u.json").read_text())
    assert report["results"] == {} and report["data"]["labels"] is False and "no labels" in report["notes"]["labels"]
    assert report["label_free"]["rows"] == 12 and report["label_free"]["vicreg"]["rankme"] > 1
    assert "knn" not in done.stdout and "lidar" in done.stdout


def test_the_held_out_sample_is_drawn_from_the_probes_test_rows(run: Path) -> None:
    enc = load_encoder(run)
    kind = enc.kind_for(None)
    sample, note = held_out_rows(kind, enc.spec, enc.config.data, rows=10, seed=0)
    _, test, _ = labelled_splits(kind, enc.spec, enc.config.data, seed=0)
    assert len(sample.data) == 10 and "10 of 19" in note
    test_rows = {bytes(r.numpy().tobytes()) for r in test.data.rows}
    assert all(bytes(r.numpy().tobytes()) in test_rows for r in sample.data.rows)
    again, _ = held_out_rows(kind, enc.spec, enc.config.data, rows=10, seed=0)
    assert torch.equal(again.data.rows, sample.data.rows)


@pytest.mark.slow
def test_train_logs_to_mlflow_read_back_with_its_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = tiny_config(tmp_path, epochs=1, label_free_every=3, label_free_rows=30)
    done = run_cli("train", "--config", _yaml(cfg, tmp_path), "--log", "tensorboard,mlflow")
    assert done.returncode == 0, done.stderr
    run_id = json.loads((cfg.out / "trackers.json").read_text())[f"mlflow:{uri}"]
    client = MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 7))
    assert [m.step for m in client.get_metric_history(run_id, "label_free.lidar")] == [3, 6]
    got = client.get_run(run_id)
    assert got.data.params["optim.base_lr"] == "0.2" and got.info.status == "FINISHED"
    assert (cfg.out / "tb").is_dir()


@pytest.mark.slow
def test_train_logs_to_wandb_offline_read_back_from_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    cfg = tiny_config(tmp_path, epochs=1)
    done = run_cli("train", "--config", _yaml(cfg, tmp_path), "--log", "wandb")
    assert done.returncode == 0, done.stderr
    assert not (cfg.out / "tb").exists()  # TensorBoard only when asked for
    (log,) = (cfg.out / "wandb").rglob("run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True, text=True)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    assert [h["_step"] for h in history if "loss" in h] == list(range(1, 7))


def _yaml(cfg: TrainConfig, folder: Path) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


def test_an_image_folder_sample_decodes_only_the_rows_picked(run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    enc = load_encoder(run)
    sample, note = held_out_rows(ImageKind(), enc.spec, str(tmp_path), rows=3, seed=0)
    assert sample.data.rows.shape == (3, 1, 16, 16) and sample.paths is not None and len(sample.paths) == 3
    assert "3 of 4 rows" in note  # 3 of the seeded 20% of 20 files
