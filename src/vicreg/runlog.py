"""A run's log on rank 0: ``metrics.jsonl``, TensorBoard events and the progress display."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vicreg.checkpoint import atomic_write

__all__ = ["RunLog", "drop_rows_after"]


class RunLog:
    """metrics.jsonl, TensorBoard and a progress bar, on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, progress: bool, total: int, start: int) -> None:
        self.enabled = enabled
        if enabled:  # a killed run may have logged steps after its last checkpoint (or before its first)
            drop_rows_after(run_dir / "metrics.jsonl", start)
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self.tb = None
        self.bar = None
        if enabled:
            # purge_step: TensorBoard hides earlier events of steps >= start (a killed run's last steps)
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start)
        if enabled and progress and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self.file is not None
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, int | float):
                    self.tb.add_scalar(key.replace(".", "/"), value, row["step"])
        if self.bar is not None and "loss" in row:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the complete metric lines of steps ``<= step``, the run's resume point: a run killed after its
    last checkpoint logged steps that the resumed run logs again, and may have left half a line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(row, dict) and row.get("step", step + 1) <= step:
            kept.append(line)
    atomic_write(path, lambda f: f.write("".join(kept).encode()))
