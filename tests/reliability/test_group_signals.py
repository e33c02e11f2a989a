"""Stop signals sent to a whole process group (Ctrl-C in a terminal, SLURM, systemd) during `vicreg train`: the
run saves a checkpoint at the step it announces, exits 143 (SIGTERM) or 130 (SIGINT) without a traceback, and a
rerun resumes from that step. Cases: an image folder decoded by 2 loader workers, in-memory data, a second signal
(aborts without saving; the previous checkpoint stays intact), two processes under torchrun (gloo) and two
torchrun agents joined by c10d rendezvous as two nodes would be, one agent's group signalled.

Each command runs in its own session (``start_new_session=True``) and is signalled with ``os.killpg``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import REPO, free_port, subprocess_env, tiny_npz, train_args

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(300)]

SMALL = ("--epochs", "100000", "--knn-every", "0", "--model.expander", "16-16", "--ckpt-every", "3")
STEP_LINE = re.compile(r"^step (\d+)/")
STOPPING = re.compile(r"stopping: saving a checkpoint at step (\d+)")


class _Group:
    """A command in its own session; its output read by threads as it comes."""

    def __init__(self, command: list[str], **env: str) -> None:
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=subprocess_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            lines.append(line)

    def steps(self) -> int:
        return max((int(m.group(1)) for line in list(self.out) if (m := STEP_LINE.match(line))), default=0)

    def wait_for_step(self, step: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.steps() < step:
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)  # the whole group: trainer, loader workers, torchrun's workers

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        for t in self._threads:
            t.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def text(self) -> str:
        return "".join(self.out) + "\n--- stderr\n" + "".join(self.err)


def _step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _image_folder(root: Path, n: int = 32) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def _stopped_at(group: _Group) -> int:
    said = [int(m.group(1)) for line in group.err if (m := STOPPING.search(line))]
    assert len(said) == 1, group.text()  # one line, from rank 0 only
    return said[0]


def _resumes_from(data: Path, out: Path, step: int, *extra: str) -> None:
    rerun = subprocess.run(
        [*train_args(data, out, *SMALL, *extra), "--max-steps", str(step + 1)],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {step}" in rerun.stdout + rerun.stderr, rerun.stdout[-3000:]
    assert _step_of(out / "checkpoints" / "last.pt") == step + 1


@pytest.mark.parametrize(
    ("sig", "workers", "code"),
    [(signal.SIGTERM, "2", 143), (signal.SIGINT, "2", 130), (signal.SIGTERM, "0", 143)],
    ids=["folder-workers-SIGTERM", "folder-workers-SIGINT", "folder-no-workers-SIGTERM"],
)
def test_a_signal_to_the_group_saves_at_the_announced_step(tmp_path: Path, sig: int, workers: str, code: int) -> None:
    data, out = _image_folder(tmp_path / "images"), tmp_path / "run"
    group = _Group([*train_args(data, out, *SMALL, "--workers", workers)])
    try:
        group.wait_for_step(4)
        group.signal(sig)
        assert group.wait() == code, group.text()
    finally:
        group.kill()
    text = group.text()
    assert "Traceback" not in text and "exited unexpectedly" not in text, text
    step = _stopped_at(group)
    assert "press Ctrl-C again to abort without saving" in text
    assert _step_of(out / "checkpoints" / "last.pt") == step
    assert f"stopped by signal at step {step}" in text
    _resumes_from(data, out, step, "--workers", workers)


def test_in_memory_data_saves_and_resumes(tmp_path: Path) -> None:
    data, out = tiny_npz(tmp_path / "d.npz", n=32), tmp_path / "run"
    group = _Group(train_args(data, out, *SMALL))
    try:
        group.wait_for_step(4)
        group.signal(signal.SIGINT)
        assert group.wait() == 130, group.text()
    finally:
        group.kill()
    assert "Traceback" not in group.text()
    step = _stopped_at(group)
    assert _step_of(out / "checkpoints" / "last.pt") == step
    _resumes_from(data, out, step)


def test_a_second_signal_aborts_without_a_traceback_and_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    data, out = _image_folder(tmp_path / "images"), tmp_path / "run"
    group = _Group([*train_args(data, out, *SMALL, "--workers", "2")])
    try:
        group.wait_for_step(4)  # a periodic checkpoint at step 3 exists
        group.signal(signal.SIGINT)
        group.signal(signal.SIGINT)
        assert group.wait() == 130, group.text()
    finally:
        group.kill()
    text = group.text()
    assert "Traceback" not in text and "exited unexpectedly" not in text, text
    # the second signal came before the save (aborted: "stopped without saving") or after it (ignored)
    assert "stopped without saving" in text or "stopped by signal" in text, text
    step = _step_of(out / "checkpoints" / "last.pt")  # loads: intact
    assert step >= 3 and not list((out / "checkpoints").glob("*.tmp"))


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--monitor-interval", "0.2", *args]


def test_torchrun_ranks_agree_on_the_stop_step(tmp_path: Path) -> None:
    data, out = tiny_npz(tmp_path / "d.npz", n=64), tmp_path / "run"
    command = _torchrun("--standalone", "--nproc-per-node", "2", "-m", "vicreg", *train_args(data, out, *SMALL)[3:])
    group = _Group(command)
    try:
        group.wait_for_step(4)
        group.signal(signal.SIGTERM)
        group.wait()
    finally:
        group.kill()
    step = _stopped_at(group)
    assert "press Ctrl-C again" not in group.text()  # under torchrun the agent's forwarded copy is not an abort
    assert _step_of(out / "checkpoints" / "last.pt") == step, group.text()
    assert "exited unexpectedly" not in group.text()
    _resumes_from(data, out, step)


def test_two_agents_joined_by_c10d_one_signalled_then_resumed(tmp_path: Path) -> None:
    """Two torchrun agents on this machine, as two nodes would be: agent A's group gets SIGTERM; the ranks agree
    on the stop step, rank 0 saves, the job ends; the same two commands run again resume from that step."""
    data, out = tiny_npz(tmp_path / "d.npz", n=64), tmp_path / "run"

    def agents(*extra: str) -> list[_Group]:
        port = free_port()
        rdzv = ("--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job")
        args = (*rdzv, "--nnodes", "2", "--nproc-per-node", "1", "-m", "vicreg")
        return [_Group(_torchrun(*args, *train_args(data, out, *SMALL, *extra)[3:])) for _ in range(2)]

    first = agents()
    try:
        main = next(g for g in _wait_any_step(first, 4))
        other = first[1] if main is first[0] else first[0]
        other.signal(signal.SIGTERM)  # the agent that does not hold rank 0: the stop must reach rank 0
        for g in first:
            g.wait(150)
    finally:
        for g in first:
            g.kill()
    step = _stopped_at(main)
    assert _step_of(out / "checkpoints" / "last.pt") == step, main.text() + other.text()

    again = agents("--max-steps", str(step + 1))
    try:
        codes = [g.wait(150) for g in again]
    finally:
        for g in again:
            g.kill()
    assert codes == [0, 0], "".join(g.text() for g in again)
    assert any(f"at step {step}" in g.text() for g in again)
    assert _step_of(out / "checkpoints" / "last.pt") == step + 1


def _wait_any_step(groups: list[_Group], step: int, timeout: float = 150) -> list[_Group]:
    """The groups (the one printing progress: rank 0's agent) that have reached ``step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [g for g in groups if g.steps() >= step]
        if ready:
            return ready
        assert all(g.proc.poll() is None for g in groups), "".join(g.text() for g in groups)
        time.sleep(0.05)
    raise AssertionError("".join(g.text() for g in groups))
