"""What a training checkpoint holds, and resuming from one: the newest checkpoint that loads, the settings that
must match, the state put back.

A leaf beside :mod:`vicreg.checkpoint`: it takes the run's settings as the plain dict of
:func:`vicreg.config.config_to_dict`, and reads or fills the objects the training loop built.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicreg.checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_candidates,
    load_checkpoint,
    no_readable_checkpoint,
    restore_rng_state,
)
from vicreg.monitors import OnlineProbe
from vicreg.resume_rules import ResumeChanges, classify_changes, describe

__all__ = [
    "MUST_MATCH",
    "check_changes",
    "check_settings",
    "newest_readable",
    "record_resume",
    "restore",
    "training_state",
]

RESUMES_NAME = "resumes.jsonl"

MUST_MATCH = ("model", "optim.name", "batch_size")
"""Settings a checkpoint's state depends on: the weights' shapes, the optimiser's state, the step -> data map.
The rest (epochs, max_steps, logging, device...) may change on resume."""


def training_state(
    step: int,
    config: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    probe: OnlineProbe | None,
    **extra: Any,
) -> dict[str, Any]:
    """The checkpoint of a run at ``step`` (what :func:`restore` puts back): the state of each object, the RNGs,
    the settings (``config``: the run's :func:`~vicreg.config.config_to_dict`), and ``extra`` entries (world size,
    schedule, data kind and encoder specs...)."""
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng_state(),
        "config": dict(config),
        **extra,
    }
    if probe is not None:
        state["probe"] = probe.state_dict()
    return state


def newest_readable(
    folder: Path, device: torch.device, say: Callable[[str], None]
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``folder`` that loads (``last.pt``, then the kept ``step_*.pt``), each damaged one
    before it reported; ``None`` when there is none. Raises :class:`CheckpointError` when none loads."""
    candidates = checkpoint_candidates(folder)
    errors: list[CheckpointError] = []
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location=device)
        except CheckpointError as err:
            errors.append(err)
            continue
        for skipped in errors:
            say(f"warning: {skipped}")
        if errors:
            say(f"warning: skipped {len(errors)} damaged checkpoint(s); resuming from the previous one, {path}")
        return path, state
    if errors:
        raise CheckpointError(no_readable_checkpoint(folder, errors))
    return None


def check_settings(path: Path, saved: Any, mine: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's config ``saved`` agrees with ``mine`` on
    :data:`MUST_MATCH`."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no run config; it was not written by `vicreg train`")
    for key in MUST_MATCH:
        section, _, name = key.partition(".")
        theirs = saved.get(section)
        if name:
            theirs = theirs.get(name) if isinstance(theirs, dict) else None
        ours = mine[section] if not name else mine[section][name]
        if theirs != ours:
            raise CheckpointError(
                f"{path} was written by a run with a different {key} config ({theirs}) than "
                f"this one ({ours}); use another --out folder or the same settings"
            )


def restore(
    path: Path,
    state: dict[str, Any],
    config: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    probe: OnlineProbe | None = None,
) -> int:
    """Put the checkpoint ``state`` (read from ``path``) back into the run's objects and the RNGs; returns its step.
    ``config``: this run's settings as a dict, checked against the checkpoint's (:func:`check_settings`)."""
    check_settings(path, state.get("config"), config)
    try:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if probe is not None and "probe" in state:
            probe.load_state_dict(state["probe"])
        restore_rng_state(state["rng"])
        step = state["step"]
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{path} does not match this model: {type(err).__name__}: {err}") from err
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{path} holds an invalid step {step!r}")
    return step


def check_changes(
    path: Path,
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    fingerprint: Mapping[str, Any] | None,
    *,
    new_data: bool = False,
) -> ResumeChanges:
    """What resuming the checkpoint ``state`` (read from ``path``) with this run's ``config`` and data
    ``fingerprint`` would change (:func:`vicreg.resume_rules.classify_changes`); returns the announced changes.

    Raises:
        CheckpointError: a change the table refuses, in one line listing only the differing fields (old -> new).
    """
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no run config; it was not written by `vicreg train`")
    changes = classify_changes(saved, config, state.get("data"), fingerprint, new_data=new_data)
    if changes.refused:
        other_data = any(c.field.startswith("data.") for c in changes.refused)
        also = " (or, to continue on other data, --resume-with-new-data)" if other_data else ""
        raise CheckpointError(
            f"{path}: resuming would change {describe(changes.refused)}; use the same values{also}, or another --out"
        )
    return changes


def record_resume(run_dir: Path, step: int, changes: ResumeChanges, clock: Callable[[], float] = time.time) -> Path:
    """Append this resume (its step, time and announced changes) to ``RUN/resumes.jsonl``, one JSON line."""
    row = {
        "step": step,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(clock())),
        "changes": [{"field": c.field, "old": c.old, "new": c.new} for c in changes.announced],
    }
    path = run_dir / RESUMES_NAME
    with open(path, "a", encoding="utf-8") as f:  # one short line: an append is all or nothing in practice
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path
