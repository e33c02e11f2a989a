"""One owner per run folder (vicreg.runlock): a real second process holds the lock while this one tries; a
holder killed with -9 leaves a lock that is taken over with a warning; the refusal names pid, host and time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import vicreg.runlock as runlock_module
from tests.helpers import run_cli, subprocess_env, tiny_npz, train_args
from vicreg.runlock import LOCK_NAME, SIDECAR_NAME, RunBusyError, RunLock, hold_run, read_holder

HOLDER = textwrap.dedent(
    """
    import sys, time
    from vicreg.runlock import hold_run

    with hold_run(sys.argv[1], "train"):
        print("held", flush=True)
        time.sleep(600)
    """
)


def _start_holder(tmp_path: Path, run: Path) -> subprocess.Popen[str]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True, env=subprocess_env()
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    proc = _start_holder(tmp_path, run)
    try:
        yield run, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.slow
def test_a_second_process_is_refused_naming_the_holder(holder) -> None:  # type: ignore[no-untyped-def]
    run, proc = holder
    with pytest.raises(RunBusyError) as info, hold_run(run, "train", fix="wait, or use another --out folder"):
        pass
    message = str(info.value)
    assert "\n" not in message
    when = time.strftime("%Y-%m-%d", time.localtime())
    assert f"pid {proc.pid} on {socket.gethostname()}" in message and f"since {when}" in message, message
    assert "vicreg train" in message and message.endswith("; wait, or use another --out folder")
    # a brief hold (eval, report, export) waits its timeout, then refuses the same way
    start = time.monotonic()
    with pytest.raises(RunBusyError, match=f"pid {proc.pid}"):
        RunLock(run, "eval", timeout=0.2).acquire()
    assert time.monotonic() - start >= 0.2
    assert read_holder(run) is not None and read_holder(run).pid == proc.pid  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_lock_left_by_a_killed_holder_is_taken_over_with_a_warning(holder) -> None:  # type: ignore[no-untyped-def]
    run, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / SIDECAR_NAME).is_file()  # the dead holder could not clean up
    warnings: list[str] = []
    with hold_run(run, "train", warn=warnings.append) as lock:
        assert lock is not None and lock.held
        assert read_holder(run).pid == os.getpid()  # type: ignore[union-attr]
    assert len(warnings) == 1 and f"taken over from dead pid {proc.pid}" in warnings[0], warnings
    assert not (run / SIDECAR_NAME).exists()


def test_release_removes_the_sidecar_and_the_next_holder_gets_no_warning(tmp_path: Path) -> None:
    run = tmp_path / "run"
    warnings: list[str] = []
    with hold_run(run, "train", warn=warnings.append) as lock:
        assert lock is not None and (run / LOCK_NAME).exists()
        holder = read_holder(run)
        assert holder is not None and holder.pid == os.getpid() and holder.command == "train"
        assert holder.host == socket.gethostname()
    assert not (run / SIDECAR_NAME).exists()
    with hold_run(run, "report", warn=warnings.append):
        pass
    assert warnings == []


def test_nested_holds_in_one_process_are_counted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with hold_run(run, "train") as outer, hold_run(run, "report") as inner:
        assert inner is outer  # train writing its own report does not wait for itself
        assert read_holder(run).command == "train"  # type: ignore[union-attr]
    assert not (run / SIDECAR_NAME).exists()


def test_ranks_other_than_zero_hold_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with hold_run(run, "train", rank=1) as lock:
        assert lock is None and not (run / SIDECAR_NAME).exists()


def test_a_second_lock_object_in_this_process_is_refused_while_held(tmp_path: Path) -> None:
    """Outside ``hold_run``'s bookkeeping (another thread's RunLock) the OS lock still refuses."""
    run = tmp_path / "run"
    first = RunLock(run, "train").acquire()
    try:
        with pytest.raises(RunBusyError, match=f"pid {os.getpid()}"):
            RunLock(run, "eval").acquire()
    finally:
        first.release()
    RunLock(run, "eval").acquire().release()


# ------------------------------------------------------------------------------------------------ through the CLI


def _cli_train(tmp_path: Path, run: Path):  # type: ignore[no-untyped-def]
    data = tiny_npz(tmp_path / "d.npz", n=32)
    args = train_args(data, run, "--max-steps", "1", "--knn-every", "0", "--model.expander", "16-16")
    return run_cli(*args[3:])


@pytest.mark.slow
def test_vicreg_train_refuses_a_folder_another_process_holds(holder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, proc = holder
    done = _cli_train(tmp_path, run)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith(f"vicreg train: {run} is in use by `vicreg train` (pid {proc.pid} on ")
    assert line.endswith("; wait for it, stop it, or use another --out folder"), line
    assert not (run / "checkpoints").exists()  # refused before anything was looked up or written


@pytest.mark.slow
def test_vicreg_train_takes_over_a_dead_holders_lock_with_a_warning(holder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _cli_train(tmp_path, run)
    assert done.returncode == 0, done.stderr
    assert f"warning: {run}: lock taken over from dead pid {proc.pid}" in done.stderr, done.stderr
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / SIDECAR_NAME).exists()


@pytest.mark.slow
def test_report_waits_briefly_then_refuses_naming_the_trainer(holder, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    run, proc = holder
    monkeypatch.setattr(runlock_module.RunLock, "__init__", _short_timeout(runlock_module.RunLock.__init__))
    done = run_cli("report", str(run))
    assert done.returncode == 1
    assert f"is in use by `vicreg train` (pid {proc.pid}" in done.stderr, done.stderr
    assert "then run this again" in done.stderr


def _short_timeout(init):  # type: ignore[no-untyped-def]
    def patched(self, folder, command, *, timeout=0.0, fix=runlock_module.DEFAULT_FIX):  # type: ignore[no-untyped-def]
        init(self, folder, command, timeout=min(timeout, 0.2), fix=fix)

    return patched
