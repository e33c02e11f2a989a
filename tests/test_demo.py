"""The README's main job (`make demo`), in its quick variant: pretrain, evaluate, report, through the CLI.

It uses a small Fashion-MNIST-format folder written by the test and found through $VICREG_DATA (searched
before the Debian package's folder), so it runs the same with or without the real dataset installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import fashion_like, run_cli


@pytest.mark.slow
def test_quick_demo_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fashion_like(tmp_path / "data")
    monkeypatch.setenv("VICREG_DATA", str(tmp_path / "data"))
    out = tmp_path / "demo"
    # the same commands and flags as `make demo-quick`
    steps = [
        ["train", "--preset", "fashion-mnist-cpu", "--out", str(out), "--budget-minutes", "10", "--max-steps", "4"],
        ["eval", str(out), "--data", "fashion-mnist", "--probe-epochs", "10", "--fractions", "0.1"],
        ["report", str(out)],
    ]
    for args in steps:
        proc = run_cli(*args)  # in-process: what it prints goes to buffers, as to a pipe
        assert proc.returncode == 0, f"vicreg {args[0]} failed:\n{proc.stderr[-3000:]}"
        if args[0] == "train":  # stdout is not a terminal, as in `make demo > demo.log`: the header and progress
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
