"""Experiment tracking where people already look: TensorBoard (default), MLflow and Weights & Biases.

One small interface, :class:`Tracker`: ``log_params`` (the configuration, flattened to dotted keys),
``log_scalars`` (numbers at a step), ``child`` (a nested run: a study is the parent run, its trials are its
children) and ``finish``. :func:`open_trackers` opens one or several backends behind one object.

* ``tensorboard``: event files under ``FOLDER/tb`` (children in sub-folders), read by ``tensorboard --logdir``.
* ``mlflow``: a local store, no server: the tracking URI given, else MLflow's own default
  (``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working folder); ``mlflow ui`` shows it.
  Children are MLflow nested runs (the ``mlflow.parentRunId`` tag).
* ``wandb``: offline mode (no network, no account) under ``FOLDER/wandb``; ``wandb sync`` uploads it later.
  A study's runs share a W&B group (the study run has job type ``study``, its trials ``trial``).

A folder that already holds a run's ids (``FOLDER/trackers.json``) continues that run: a resumed training run or
a re-run tune logs into the same MLflow / W&B run. MLflow and W&B are optional (``pip install 'vicreg[mlflow]'``,
``'vicreg[wandb]'``); without them, opening that backend raises an ``ImportError`` of one line naming the extra.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "BACKENDS",
    "MLflowTracker",
    "MultiTracker",
    "TensorBoardTracker",
    "Tracker",
    "WandbTracker",
    "flatten",
    "open_trackers",
    "parse_backends",
]

BACKENDS = ("tensorboard", "mlflow", "wandb")
IDS_FILE = "trackers.json"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"base_lr": 1}}`` -> ``{"optim.base_lr": 1}``; other values as they are (paths as text)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value) if isinstance(value, Path) else value
    return out


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (booleans and text are not scalars to plot)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def parse_backends(names: str | Sequence[str]) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` or ``["mlflow", "wandb"]`` -> the backend names, checked, without repeats."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    items = [n for n in items if n]
    for name in items:
        if name not in BACKENDS:
            raise ValueError(f"unknown tracker {name!r} for --log; choose from {', '.join(BACKENDS)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def _read_ids(folder: Path) -> dict[str, str]:
    path = folder / IDS_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_id(folder: Path, key: str, run_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ids = _read_ids(folder) | {key: run_id}
    tmp = folder / f".{IDS_FILE}.tmp"
    tmp.write_text(json.dumps(ids, indent=1, sort_keys=True))
    os.replace(tmp, folder / IDS_FILE)


class Tracker(ABC):
    """A run in one tracking backend (or several, :class:`MultiTracker`)."""

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's configuration (nested mappings are flattened to dotted keys)."""

    @abstractmethod
    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Record the finite numbers of ``values`` at ``step`` (other values are skipped)."""

    @abstractmethod
    def child(self, name: str, folder: Path) -> Tracker:
        """A nested run ``name`` (a trial of a study) whose local state lives in ``folder``."""

    @abstractmethod
    def finish(self, status: str = "finished") -> None:
        """Close the run; ``status``: finished, failed or killed."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        self.finish("finished" if kind is None else "killed" if kind is KeyboardInterrupt else "failed")


class TensorBoardTracker(Tracker):
    """Event files in ``folder`` (a child: a sub-folder named after it, so TensorBoard lists it beside)."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        self.folder = Path(folder)
        self.writer = SummaryWriter(str(self.folder), purge_step=purge_step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(flatten(params).items()))
        self.writer.add_text("params", "| key | value |\n|---|---|\n" + rows)
        self.writer.flush()

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        for key, value in _numbers(values).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def child(self, name: str, folder: Path) -> Tracker:
        return TensorBoardTracker(self.folder / name)

    def finish(self, status: str = "finished") -> None:
        self.writer.close()


def _import_mlflow() -> Any:
    try:
        import mlflow
        import mlflow.tracking
    except ImportError as err:
        raise ImportError("--log mlflow needs MLflow; install it with: pip install 'vicreg[mlflow]'") from err
    return mlflow


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as err:
        raise ImportError("--log wandb needs Weights & Biases; install it with: pip install 'vicreg[wandb]'") from err
    return wandb


class MLflowTracker(Tracker):
    """One MLflow run through ``MlflowClient`` (no global active run, so studies and trials can interleave).

    ``uri``: a tracking URI (``sqlite:///path/mlflow.db``, ``file:...`` where MLflow still allows it, or a
    server's ``http(s)://``); a path ending in ``.db`` means SQLite; empty: MLflow's default.
    """

    def __init__(
        self, folder: Path, name: str, *, uri: str = "", experiment: str = "vicreg", parent_id: str | None = None
    ) -> None:
        mlflow = _import_mlflow()
        self.folder, self.name, self.experiment = Path(folder), name, experiment
        self.uri = _mlflow_uri(uri) or mlflow.get_tracking_uri()
        self.client = mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        exp_id = _experiment_id(self.client, experiment)
        key = f"mlflow:{self.uri}"
        stored = _read_ids(self.folder).get(key)
        self.run_id = ""
        if stored:
            try:
                self.client.get_run(stored)
                self.client.update_run(stored, status="RUNNING")
                self.run_id = stored
            except Exception:  # the store was reset or moved: start a new run
                self.run_id = ""
        if not self.run_id:
            tags = {"mlflow.parentRunId": parent_id} if parent_id else {}
            self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            _write_id(self.folder, key, self.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        logged = self.client.get_run(self.run_id).data.params  # MLflow refuses to change a logged param
        new = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items()) if k not in logged]
        for start in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[start : start + 100])

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in _numbers(values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def child(self, name: str, folder: Path) -> Tracker:
        return MLflowTracker(folder, name, uri=self.uri, experiment=self.experiment, parent_id=self.run_id)

    def finish(self, status: str = "finished") -> None:
        mapping = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
        self.client.set_terminated(self.run_id, status=mapping.get(status, "FINISHED"))


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # another process of the same study created it a moment ago
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _mlflow_uri(uri: str) -> str:
    if uri and "://" not in uri and uri.endswith(".db"):
        return f"sqlite:///{Path(uri).expanduser().resolve()}"
    return uri


class WandbTracker(Tracker):
    """One W&B run in offline mode under ``folder/wandb`` (``mode`` may be set to online by the caller)."""

    def __init__(
        self,
        folder: Path,
        name: str,
        *,
        project: str = "vicreg",
        group: str | None = None,
        job_type: str = "train",
        mode: str = "offline",
    ) -> None:
        wandb = _import_wandb()
        self.folder, self.name, self.project, self.mode = Path(folder), name, project, mode
        self.group = group
        self.folder.mkdir(parents=True, exist_ok=True)
        run_id = _read_ids(self.folder).get("wandb") or secrets.token_hex(4)
        self.run = wandb.init(
            project=project,
            dir=str(self.folder),
            id=run_id,
            name=name,
            group=group,
            job_type=job_type,
            mode=mode,
            resume="allow",
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        _write_id(self.folder, "wandb", run_id)

    @property
    def run_dir(self) -> Path:
        """The run's own folder (``.../wandb/offline-run-<time>-<id>``), holding its ``run-<id>.wandb`` log."""
        return Path(self.run.dir).parent

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(flatten(params), allow_val_change=True)

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        numbers = _numbers(values)
        if numbers:
            self.run.log(numbers, step=step)

    def child(self, name: str, folder: Path) -> Tracker:
        return WandbTracker(
            folder, name, project=self.project, group=self.group or self.name, job_type="trial", mode=self.mode
        )

    def finish(self, status: str = "finished") -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


class MultiTracker(Tracker):
    """Several backends as one: every call goes to each, in order."""

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers = list(trackers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        for t in self.trackers:
            t.log_scalars(values, step)

    def child(self, name: str, folder: Path) -> Tracker:
        return MultiTracker(t.child(name, folder) for t in self.trackers)

    def finish(self, status: str = "finished") -> None:
        for t in self.trackers:
            t.finish(status)


def open_trackers(
    backends: str | Sequence[str],
    folder: str | os.PathLike[str],
    name: str,
    *,
    mlflow_uri: str = "",
    project: str = "vicreg",
    study: bool = False,
    tensorboard_folder: str | os.PathLike[str] | None = None,
    purge_step: int | None = None,
) -> MultiTracker:
    """The trackers named in ``backends`` (e.g. ``"tensorboard,mlflow"``) for the run ``name`` kept in ``folder``.

    ``study=True``: the run is a tune study, the parent of its trials (W&B: a group of that name, job type
    ``study``). ``tensorboard_folder``: where the events go (default ``folder/tb``); ``purge_step`` hides the
    events a killed run logged after the step it resumes from.
    """
    folder = Path(folder)
    out: list[Tracker] = []
    for backend in parse_backends(backends):
        if backend == "tensorboard":
            out.append(TensorBoardTracker(Path(tensorboard_folder or folder / "tb"), purge_step))
        elif backend == "mlflow":
            out.append(MLflowTracker(folder, name, uri=mlflow_uri, experiment=project))
        else:
            job = "study" if study else "train"
            out.append(WandbTracker(folder, name, project=project, group=name if study else None, job_type=job))
    return MultiTracker(out)
