"""The README's main job (`make demo`), in its quick variant: pretrain, evaluate, report, through the CLI.

It uses a small Fashion-MNIST-format folder written by the test and found through $VICREG_DATA (searched
before the Debian package's folder), so it runs the same with or without the real dataset installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.data.make_files import write_idx

REPO = Path(__file__).resolve().parents[1]


def _fashion_like(root: Path, n_train: int = 1200, n_test: int = 300) -> None:
    """IDX files with two learnable classes (a bright square or a bright bar) and noise."""
    rng = np.random.default_rng(0)
    folder = root / "fashion-mnist"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 2).astype(np.uint8)
        for i in range(n):
            r, c = rng.integers(2, 18, 2)
            if labels[i]:
                images[i, r : r + 8, c : c + 8] = 230
            else:
                images[i, r : r + 3, 2:26] = 230
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.mark.slow
def test_quick_demo_pipeline(tmp_path: Path) -> None:
    _fashion_like(tmp_path / "data")
    env = {**os.environ, "VICREG_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "2"}
    out = tmp_path / "demo"
    # the same commands and flags as `make demo-quick`
    steps = [
        ["train", "--preset", "fashion-mnist-cpu", "--out", str(out), "--budget-minutes", "10", "--max-steps", "4"],
        ["eval", str(out), "--data", "fashion-mnist", "--probe-epochs", "10", "--fractions", "0.1"],
        ["report", str(out)],
    ]
    for args in steps:
        proc = subprocess.run(
            [sys.executable, "-m", "vicreg", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"vicreg {args[0]} failed:\n{proc.stderr[-3000:]}"
        if args[0] == "train":  # stdout is a pipe, as in `make demo > demo.log`: the header and progress lines
            assert (
                "starting a new run" in proc.stdout
                and "fashion-mnist (train): 1200 samples of 1x28x28, 10 classes" in proc.stdout
            )
            assert "step 4/4 (100%) | loss" in proc.stdout, proc.stdout
    result = json.loads((out / "eval.json").read_text())
    assert {"vicreg", "random_init", "pixels"} <= set(json.dumps(result).split('"'))
    report = (out / "report.md").read_text()
    assert "loss.png" in report and (out / "report" / "loss.png").is_file()
    assert (out / "backbone.safetensors").is_file()
