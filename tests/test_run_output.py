"""What a run tells the person running it (the header, the resume line, progress without a terminal), and the
checkpoints it keeps: a damaged newest one is skipped for the previous one, on resume and in eval/export."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import vicreg.runlog as runlog
from tests.helpers import run_cli, tiny_config, tiny_npz
from vicreg.build import find_checkpoint
from vicreg.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    checkpoint_candidates,
    load_checkpoint,
    newest_good_checkpoint,
    save_checkpoint,
    save_keeping,
)
from vicreg.plots import plot_knn
from vicreg.report import ReportArgs, make_report
from vicreg.runlog import RunLog, format_duration, progress_line
from vicreg.train import train

# ------------------------------------------------------------------------------------------------ progress


def test_progress_line() -> None:
    row = {"loss": 23.456, "invariance": 0.81, "variance": 0.62, "covariance": 1.2, "images_per_s": 412.3}
    line = progress_line(40, 1300, 0, 83.0, row)
    assert line == (
        "step 40/1300 (3%) | loss 23.46 (invariance 0.81, variance 0.62, covariance 1.2) | 412 img/s | "
        "elapsed 0:01:23, ETA 0:43:34"  # 83 s / 40 steps x 1260 steps left
    )
    assert progress_line(5, 0, 0, 2.0, {}) == "step 5/? | elapsed 0:00:02, ETA ?"  # a budget not yet decided
    assert format_duration(3 * 3600 + 62) == "3:01:02"


def test_without_a_terminal_progress_is_a_line_per_window_and_every_30_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    monkeypatch.setattr(runlog.time, "monotonic", lambda: now[0])
    out = io.StringIO()  # not a terminal
    log = RunLog(tmp_path, enabled=True, progress=True, total=100, start=0, out=out)
    log.message("the header")
    for step in range(1, 11):
        now[0] += 1.0
        log.advance()
        if step % 5 == 0:
            log.log({"step": step, "loss": 1.0, "images_per_s": 10.0})
    now[0] += 31.0  # a long window: a line anyway
    log.advance()
    log.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "the header"
    assert [line.split(" |")[0] for line in lines[1:]] == ["step 5/100 (5%)", "step 10/100 (10%)", "step 11/100 (11%)"]
    assert "ETA" in lines[-1] and "loss 1" in lines[-1]  # the last window's loss


def test_no_progress_prints_only_messages(tmp_path: Path) -> None:
    out = io.StringIO()
    log = RunLog(tmp_path, enabled=True, progress=False, total=10, start=0, out=out)
    log.message("hello")
    log.advance()
    log.log({"step": 1, "loss": 1.0})
    log.close()
    assert out.getvalue() == "hello\n"


@pytest.mark.slow
def test_header_progress_and_resume_line_through_the_cli(tmp_path: Path) -> None:
    """stdout and stderr are pipes (not terminals): the header, then progress lines, then the resume line."""
    data = tiny_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    args = [
        "train", "--data", str(data), "--out", str(out), "--device", "cpu",
        "--batch-size", "16", "--views.size", "16", "--model.backbone", "small_cnn", "--model.width", "4",
        "--model.expander", "32-32", "--log-every", "2", "--epochs", "2", "--precision", "bf16",
    ]  # fmt: skip
    first = run_cli(*args)  # in-process; what it prints goes to buffers, as to a pipe
    assert first.returncode == 0, first.stderr
    text = first.stdout
    header = text.split("starting a new run")[0]
    for words in (
        f"data        {data} (train): 96 samples of 1x16x16, 2 classes",
        "encoder     small_cnn: ",
        "expander    32-32: ",
        "device      cpu, bf16 autocast (loss in fp32), 1 process, batch 16 per process (16 global)",
        "length      12 steps = 2 epochs of 6 steps",
        "schedule    lars, peak lr 0.0125 (base 0.2 x 16/256), 12 warm-up steps",
        f"run folder  {out}",
    ):
        assert words in header, f"{words!r} not in\n{header}"
    progress = [line for line in text.splitlines() if line.startswith("step ") and "/12 (" in line]
    assert [line.split(" ")[1] for line in progress] == ["2/12", "4/12", "6/12", "8/12", "10/12", "12/12"]
    assert all("loss" in line and "img/s" in line and "ETA" in line for line in progress)
    assert "online kNN top1" in text and "k=20" in text  # the monitor's line names its protocol

    second = run_cli(*args[:-4], "--epochs", "3", "--precision", "bf16")  # a longer run: announced, not refused
    assert second.returncode == 0, second.stderr
    assert f"resuming from {out / 'checkpoints' / 'last.pt'} at step 12 of 18 (epoch 2.00)" in second.stdout
    assert "starting a new run" not in second.stdout


# ------------------------------------------------------------------------------------------------ checkpoints


def _damage(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    middle = len(blob) // 2
    blob[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(blob))


def test_save_keeping_keeps_the_newest(tmp_path: Path) -> None:
    previous = None
    for step in (2, 4, 6, 8):
        save_keeping({"step": step}, tmp_path, keep=3, previous_step=previous)
        previous = step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_00000004.pt", "step_00000006.pt"]
    assert [load_checkpoint(p)["step"] for p in checkpoint_candidates(tmp_path)] == [8, 6, 4]
    # resumed from step 4 (a damaged newer one): later step files of the abandoned path are removed
    save_keeping({"step": 5}, tmp_path, keep=3, previous_step=None)
    assert [load_checkpoint(p)["step"] for p in checkpoint_candidates(tmp_path)] == [5, 4]
    save_keeping({"step": 7}, tmp_path, keep=1, previous_step=5)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        save_keeping({"step": 9}, tmp_path, keep=0, previous_step=7)


def test_newest_good_checkpoint_skips_damaged_ones(tmp_path: Path) -> None:
    assert newest_good_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        save_checkpoint({"step": step, "w": torch.arange(1000.0)}, tmp_path / f"step_{step:08d}.pt")
    os.link(tmp_path / "step_00000003.pt", tmp_path / "last.pt")  # a hard link is listed once
    assert [p.name for p in checkpoint_candidates(tmp_path)] == ["last.pt", "step_00000002.pt", "step_00000001.pt"]
    _damage(tmp_path / "last.pt")
    with pytest.warns(CheckpointWarning, match="last.pt"):
        assert newest_good_checkpoint(tmp_path) == tmp_path / "step_00000002.pt"
    _damage(tmp_path / "step_00000002.pt")
    (tmp_path / "step_00000001.pt").write_bytes(b"cut")
    with warnings.catch_warnings(), pytest.raises(CheckpointError, match=r"no readable checkpoint .*3 damaged"):
        warnings.simplefilter("ignore")
        newest_good_checkpoint(tmp_path)


def test_a_damaged_last_checkpoint_resumes_from_the_previous_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bit rot in last.pt: the rerun warns, resumes from the kept checkpoint and ends with the weights of an
    undisturbed run; eval/export (find_checkpoint) take the previous one too."""
    undisturbed = train(tiny_config(tmp_path / "a", max_steps=8, knn_every=0, ckpt_every=2))
    cfg = tiny_config(tmp_path / "b", max_steps=6, knn_every=0, ckpt_every=2)
    train(cfg)
    ckpts = cfg.out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "step_00000004.pt"]  # keep_checkpoints=2
    _damage(ckpts / "last.pt")
    with pytest.warns(CheckpointWarning, match="last.pt"):
        assert find_checkpoint(cfg.out) == ckpts / "step_00000004.pt"
    capsys.readouterr()
    resumed = train(replace(cfg, max_steps=8))
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "last.pt" in captured.err and "step_00000004.pt" in captured.err
    assert f"resuming from {ckpts / 'step_00000004.pt'} at step 4 of 12" in captured.out
    assert resumed.step == 8
    a = load_checkpoint(undisturbed.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(ckpts / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_every_checkpoint_damaged_is_an_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, max_steps=4, knn_every=0, ckpt_every=2)
    train(cfg)
    for path in (cfg.out / "checkpoints").iterdir():
        _damage(path)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint .*2 damaged"):
        train(replace(cfg, max_steps=6))


# ------------------------------------------------------------------------------------------------ online kNN


def test_the_report_reads_online_knn_and_the_old_knn_keys(tmp_path: Path) -> None:
    new = [{"step": 6 * e, "epoch": float(e), "online_knn.top1": 50.0 + e, "online_knn.top5": 90.0} for e in (1, 2)]
    old = [{"step": r["step"], "epoch": r["epoch"], "knn.top1": r["online_knn.top1"], "knn.top5": 90.0} for r in new]
    a = plot_knn(new, tmp_path / "new.png").read_bytes()
    b = plot_knn(old, tmp_path / "old.png").read_bytes()
    empty = plot_knn([], tmp_path / "empty.png").read_bytes()
    assert a == b != empty


@pytest.mark.slow
def test_the_report_captions_the_online_knn_with_its_protocol(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1)
    train(cfg)
    rows = (cfg.out / "metrics.jsonl").read_text()
    assert '"online_knn.protocol": "online kNN (k=20, cosine, T=0.07): 77 training rows as neighbours' in rows
    make_report(cfg.out, ReportArgs(device="cpu"))
    text = (cfg.out / "report.md").read_text()
    assert "The online kNN (k=20, cosine, T=0.07): 77 training rows as neighbours, 19 queries" in text
