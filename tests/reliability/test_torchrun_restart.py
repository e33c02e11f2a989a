"""Distributed: one of two gloo workers dies mid-run; ``torchrun --max-restarts`` restarts the group, which
resumes from ``checkpoints/last.pt`` and finishes with the state of an uninterrupted two-process run.

The fault is injected by a wrapper script that this test writes (nothing in the library knows about it):
on the first attempt (``TORCHELASTIC_RESTART_COUNT`` = 0, set by torchrun) rank 1 calls ``os._exit(1)``
when it reaches step ``DIE_AT``.

torchrun keeps its key-value store across restarts, so before vicreg prefixed the process group's keys with
the restart count the restarted workers could read the dead attempt's gloo addresses: 3 of 8 tries failed
with ``--master-port`` (static rendezvous) and 5 of 6 with ``--standalone``; after the fix 12 of 12 finished
(docs/reliability.md). This test uses ``--standalone``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_same_state, subprocess_env, tiny_npz, train_args

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CKPT_EVERY, DIE_AT = 3, 7  # steps 1-6 done, checkpoints at 3 and 6: the restart must resume from 6

WRAPPER = """
import os, sys
import vicreg.train as train_module
from vicreg.cli import main

rank = int(os.environ["RANK"])
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
die_at = int(os.environ["DIE_AT"])
view_seed, restore = train_module._view_seed, train_module.restore


def dying_view_seed(seed, step, r):  # called once per step, before the step's work
    if rank == 1 and attempt == 0 and step == die_at:
        os._exit(1)
    return view_seed(seed, step, r)


def logged_resume(*args, **kwargs):
    step = restore(*args, **kwargs)
    with open(os.path.join(os.environ["LOG_DIR"], f"resumed-attempt{attempt}-rank{rank}"), "w") as f:
        f.write(str(step))
    return step


train_module._view_seed, train_module.restore = dying_view_seed, logged_resume
main(sys.argv[1:])
"""


def _torchrun(tmp_path: Path, data: Path, out: Path, *, wrapper: Path | None) -> subprocess.CompletedProcess:
    args = train_args(data, out, "--epochs", "3", "--model.expander", "32-32", "--ckpt-every", str(CKPT_EVERY))
    launcher = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
        "1", "--monitor-interval", "0.2",
    ]  # fmt: skip
    command = [*launcher, str(wrapper), *args[3:]] if wrapper else [*launcher, "-m", "vicreg", *args[3:]]
    env = subprocess_env(DIE_AT=str(DIE_AT), LOG_DIR=str(tmp_path))
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def test_worker_dies_and_torchrun_restart_resumes(tmp_path: Path) -> None:
    data = tiny_npz(tmp_path / "d.npz", n=64)  # 4 steps per epoch, 12 in all
    wrapper = tmp_path / "dying_worker.py"
    wrapper.write_text(textwrap.dedent(WRAPPER))
    out = tmp_path / "run"
    done = _torchrun(tmp_path, data, out, wrapper=wrapper)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "failed (exitcode: 1) local_rank: 1" in done.stderr, done.stderr[-4000:]  # the fault happened
    # the first attempt started fresh; the restarted group (attempt 1) resumed both ranks from step 6
    resumed = {p.name: int(p.read_text()) for p in tmp_path.glob("resumed-*")}
    assert resumed == {"resumed-attempt1-rank0": 6, "resumed-attempt1-rank1": 6}, (resumed, done.stderr[-3000:])

    reference = tmp_path / "reference"
    done = _torchrun(tmp_path, data, reference, wrapper=None)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same_state(out / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
