"""``kill -9`` of a real training process at random points, then resume: the run finishes, every checkpoint
seen between kills loads, and the final state is bit-identical to an uninterrupted run (CPU, one thread).

No hook in the library: kills that must land *during a checkpoint write* watch the checkpoint folder for
the temporary file that :func:`vicreg.files.atomic_write` creates and kill the process while it exists.
``VICREG_RELIABILITY_KILLS`` (default 5) sets the number of kills, ``VICREG_RELIABILITY_SEED`` the random
delays (default: a fresh seed, printed on failure).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import assert_same_state, env_int, subprocess_env, tiny_npz, train_args
from vicreg.checkpoint import load_checkpoint, read_backbone_state

KILLS = env_int("VICREG_RELIABILITY_KILLS", 5)
pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(240 + 40 * KILLS)]
# "write": while a checkpoint is being written; "step": at a random moment after the next training step;
# "start": a random delay after launch (imports, data, resume)
MODES = ("write", "step", "write", "start", "step")
EXTRA = ("--epochs", "8", "--model.expander", "512-512", "--ckpt-every", "2")  # 48 steps, 2.4 MB checkpoints


def _temps(folder: Path) -> set[str]:
    try:
        return {n for n in os.listdir(folder) if n.startswith(".last.pt.") and n.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def _metric_lines(out: Path) -> int:
    try:
        return (out / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_when(proc: subprocess.Popen, mode: str, out: Path, rng: random.Random) -> bool:
    """Wait for the moment ``mode`` asks for, then SIGKILL. Returns whether a checkpoint write was cut."""
    ckpt_dir = out / "checkpoints"
    deadline = time.monotonic() + 120
    if mode == "write":
        stale = _temps(ckpt_dir)
        while proc.poll() is None and time.monotonic() < deadline:
            fresh = _temps(ckpt_dir) - stale
            if fresh:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return bool(_temps(ckpt_dir) & fresh)  # still there: the rename never happened
        return False
    if mode == "step":
        seen = _metric_lines(out)
        while proc.poll() is None and time.monotonic() < deadline and _metric_lines(out) <= seen:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        time.sleep(rng.uniform(0.2, 6.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return False


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("images_per_s", None)  # wall-clock dependent
    return rows


def _killed_run(args: list[str], out: Path, kills: int, rng: random.Random, log: Path) -> list[tuple]:
    """Launch and ``kill -9`` the run up to ``kills`` times (fewer when it finishes first), checking after
    each kill that the checkpoint loads and never goes back. Returns (mode, exit code, write cut, step)."""
    last = out / "checkpoints" / "last.pt"
    history: list[tuple[str, int | None, bool, int | None]] = []
    while len(history) < kills:
        mode = MODES[len(history) % len(MODES)]
        with open(log, "w") as err:
            proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=err)
            cut = _kill_when(proc, mode, out, rng)
        step = load_checkpoint(last)["step"] if last.exists() else None  # raises if ever corrupt
        history.append((mode, proc.returncode, cut, step))
        assert proc.returncode in (-signal.SIGKILL, 0), f"{history}\n{log.read_text()[-3000:]}"
        steps = [h[3] for h in history if h[3] is not None]
        assert steps == sorted(steps), f"a checkpoint went back in time: {history}"
        if proc.returncode == 0:  # finished before the kill
            break
    return history


def test_kill_9_at_random_points_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    seed = env_int("VICREG_RELIABILITY_SEED", random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    data = tiny_npz(tmp_path / "d.npz")
    env = subprocess_env()
    ref = tmp_path / "ref"
    done = subprocess.run(train_args(data, ref, *EXTRA), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # a soak run (many kills) goes through several run folders, each killed until it finishes
    history: list[tuple] = []
    run = 0
    while sum(h[1] != 0 for h in history) < KILLS:
        out = tmp_path / f"killed{run}"
        args = train_args(data, out, *EXTRA)
        history += _killed_run(args, out, KILLS - sum(h[1] != 0 for h in history), rng, tmp_path / "err.txt")
        context = f"seed {seed}, history (mode, exit code, write cut, step) {history}"
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{context}\n{done.stderr[-3000:]}"
        assert_same_state(out / "checkpoints" / "last.pt", ref / "checkpoints" / "last.pt")
        a, b = read_backbone_state(out / "backbone.safetensors"), read_backbone_state(ref / "backbone.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), context
        # metrics: every step exactly once, with the values of the uninterrupted run; no half-written line
        assert _rows(out) == _rows(ref), context
        # no temporary file of a cut write is left behind
        assert not [p.name for p in out.rglob(".*.tmp")], context
        run += 1
    if KILLS >= 2:
        assert any(h[2] for h in history), f"no kill landed inside a checkpoint write: {context}"
    kills = [h for h in history if h[1] != 0]
    summary = {m: (sum(h[0] == m for h in kills), sum(h[0] == m and h[2] for h in kills)) for m in MODES}
    print(f"kill -9 (seed {seed}): {len(kills)} kills in {run} run(s); per mode (kills, writes cut): {summary}")
