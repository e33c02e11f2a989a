"""The benchmark scripts that are run rarely (ablations, GPU smoke) still run: a dry run of each on tiny data.

They check plumbing, not numbers: the numbers live in benchmarks/README.md and docs/ablations.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import fashion_like

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_ablations_dry_run_writes_results_and_reuses_identical_runs(tmp_path: Path) -> None:
    fashion_like(tmp_path / "data", n_train=600, n_test=200)
    env = {**os.environ, "VICREG_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "2"}
    out = tmp_path / "abl"
    args = ["--out", str(out), "--max-steps", "2", "--groups", "loss", "simsiam"]
    proc = _run("ablations.py", args, env)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["group"] for r in rows} == {"loss", "simsiam"} and len(rows) == 9
    for r in rows:
        assert r["steps"] == 2 and 0 <= r["knn_top1"] <= 100
        assert r["embedding"]["effective_rank"] >= 1 and r["embedding"]["std_mean"] >= 0
    assert "| loss | full 25/25/1" in proc.stdout and "68.6" in proc.stdout  # the paper's value beside ours
    # a second call adds only the new rows; the expander-1024 row is the preset itself and reuses the full row
    proc = _run("ablations.py", [*args[:4], "--groups", "loss", "expander"], env)
    assert "[loss]" not in proc.stdout and proc.stdout.count("[expander]") == 5
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    reused = [r for r in rows if r["name"] == "expander 1024-1024-1024"]
    assert len(reused) == 1 and reused[0]["same_as"].startswith("full 25/25/1") and len(rows) == 15


@pytest.mark.slow
def test_gpu_smoke_dry_run_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    args = ["--device", "cpu", "--steps", "3", "--log-every", "1", "--skip", "1", "--batch-size", "8", "--workers", "0"]
    proc = _run("gpu_smoke.py", args, env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["preset"] == "cifar10-resnet18" and summary["steps"] == 3
    assert summary["images_per_s_median"] > 0 and summary["train_gflop_per_image"] > 1
    assert all(abs(v) < 1e6 for v in summary["final"].values())
