"""Hugging Face datasets through the CLI: train, resume, eval and embed on a dataset saved with ``save_to_disk``
(in-process); streaming under torchrun (real processes: the process group is the point); the offline error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, run_cli, subprocess_env
from vicreg.checkpoint import load_checkpoint

datasets = pytest.importorskip("datasets")


TINY = [
    "--device", "cpu", "--batch-size", "8", "--views.size", "16", "--model.backbone", "small_cnn",
    "--model.width", "4", "--model.expander", "32-32", "--workers", "1", "--log-every", "1", "--knn-every", "0",
]  # fmt: skip


def _saved(root: Path, n_train: int = 40, n_test: int = 12) -> Path:
    """A DatasetDict of 20x24 / 24x20 RGB images with a ClassLabel, written with save_to_disk."""
    rng = np.random.default_rng(0)

    def split(n: int):
        images = [
            Image.fromarray(rng.integers(0, 256, (20 + 4 * (i % 2), 24 - 4 * (i % 2), 3), np.uint8)) for i in range(n)
        ]
        features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["a", "b"])})
        return datasets.Dataset.from_dict({"picture": images, "kind": [i % 2 for i in range(n)]}, features=features)

    datasets.DatasetDict(train=split(n_train), test=split(n_test)).save_to_disk(str(root))
    return root


def _vicreg(*args: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_train_resume_eval_embed_on_a_saved_dataset(tmp_path: Path) -> None:
    data = _saved(tmp_path / "set")
    out = tmp_path / "run"
    # train: image and label columns found from the features (Image, ClassLabel)
    _vicreg("train", "--data", f"hf:{data}", "--out", str(out), "--epochs", "1", *TINY)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 40 // 8
    # resume to a later step: the same run folder continues
    _vicreg("train", "--data", f"hf:{data}", "--out", str(out), "--epochs", "2", *TINY)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2 * (40 // 8)
    # eval on the dataset's own train/test splits
    _vicreg("eval", str(out), "--data", f"hf:{data}", "--device", "cpu", "--probe-epochs", "2", "--k", "5")
    # embed one split to a file, with the columns named explicitly
    emb = tmp_path / "emb.npz"
    _vicreg(
        "embed", str(out), "--data", f"hf:{data}:test", "--data-column", "picture", "--label-column", "kind",
        "--out", str(emb), "--device", "cpu",
    )  # fmt: skip
    assert np.load(emb)["embeddings"].shape[0] == 12


@pytest.mark.slow
def test_streaming_train_under_torchrun(tmp_path: Path) -> None:
    data = _saved(tmp_path / "set", n_train=64)
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "vicreg", "train",
        "--data", f"hf-stream:{data}", "--out", str(out), "--epochs", "1", *TINY,
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 64 // 8  # global batch 8 = 2 ranks x 4: every rank 8 batches


def test_missing_extra_and_offline_errors_are_one_line(tmp_path: Path) -> None:
    done = run_cli("train", "--data", "hf:nobody/no-such-set", "--out", tmp_path / "r")
    assert done.returncode == 1 and done.stderr.startswith("vicreg train: ")
    assert "not in the local Hugging Face cache" in done.stderr and "--download" in done.stderr
