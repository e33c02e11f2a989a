"""benchmarks/label_free.py runs and resumes: its --smoke mode on the two small tables (plumbing, not numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, subprocess_env


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "benchmarks/label_free.py", *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_smoke_run_scores_every_run_and_skips_done_runs(tmp_path: Path) -> None:
    args = ["--smoke", "--datasets", "wine", "breast_cancer", "--out", str(tmp_path)]
    first = _run(args)
    rows = [json.loads(line) for line in (tmp_path / "smoke.jsonl").read_text().splitlines()]
    assert [r["dataset"] for r in rows] == ["wine", "wine", "breast_cancer", "breast_cancer"]
    for r in rows:
        assert r["steps"] == 3 and 0 <= r["knn_top1"] <= 100 and 0 <= r["linear_top1"] <= 100
        assert r["rankme"] >= 1 and r["lidar"] >= 1 and r["rankme_init"] >= 1 and 0 <= r["cka_to_init"] <= 1 + 1e-9
    assert "| wine (knn) | 2 |" in first.stdout and (tmp_path / "smoke.png").is_file()
    again = _run(args)  # resumable: nothing left to run
    assert "[wine" not in again.stdout and len((tmp_path / "smoke.jsonl").read_text().splitlines()) == 4
