"""``vicreg tune``: choose the hyper-parameters of a VICReg run without labels, on Optuna.

Each trial is a budgeted training run (``--trial-minutes``) through the normal trainer, scored without labels on
held-out rows (:mod:`vicreg.probes.label_free`: LiDAR by default). Optuna's TPE sampler proposes the next
configuration; a median pruner stops a trial whose intermediate label-free score falls below the median of the
earlier trials at the same step. The study lives in a database (SQLite in the study folder by default:
embedded, no server), so re-running the same command continues it, and several processes or machines share
one study through ``--storage`` (a PostgreSQL or MySQL URL across machines) and ``--study``.

A killed tune loses at most the trial it was running: Optuna leaves that trial RUNNING; the next start marks
the trials of this machine whose process is gone as FAIL (other machines' through Optuna's heartbeat) and
queues them again, and the retried trial resumes the killed trial's run folder from its last checkpoint.

The study folder holds ``study.db``, ``trials.csv`` / ``trials.md`` (parameters, score, minutes, state, and
labelled accuracy when the trainer measured it: for the table only, never used to choose), ``best.yaml`` (the
best configuration, read by ``vicreg train --config best.yaml``), ``score.png`` and ``importance.png``
(Optuna's fANOVA parameter importance), one run folder per trial under ``trials/``, and with ``--then-train``
the winner trained for the rest of the budget in ``final/``.

The trainer is a parameter (``train_fn``), given by the CLI: a run never imports another run. Its contract:

    train_fn(cfg: TrainConfig, report: Report) -> TrialOutcome

It trains ``cfg`` (its ``out`` and ``budget_minutes`` are set by the tune; resuming when ``out`` holds a
checkpoint), calls ``report(step, scores)`` with the label-free scores of the held-out rows every so many steps
and stops early (saving its checkpoint) when ``report`` returns ``True``; it returns the final scores.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock
from matplotlib.figure import Figure

from vicreg.config import TrainConfig, config_to_dict, merge
from vicreg.files import atomic_write
from vicreg.models import parse_expander_spec
from vicreg.probes.label_free import CRITERIA, selection_score
from vicreg.trackers import open_trackers, parse_backends

__all__ = [
    "Dimension",
    "Report",
    "TrialOutcome",
    "TuneResult",
    "TuneSettings",
    "apply_params",
    "default_space",
    "load_space",
    "run_tune",
]

Report = Callable[[int, Mapping[str, float]], bool]
"""``report(step, scores) -> stop``: the trainer's call with intermediate label-free scores; ``True`` means the
pruner stopped this trial and the trainer should save and return (with ``TrialOutcome.pruned``)."""


@dataclass(frozen=True)
class TrialOutcome:
    """What the trainer returns for one trial."""

    scores: Mapping[str, float]
    """The final label-free scores of the trained encoder on the held-out rows (``label_free_scores``)."""
    accuracy: Mapping[str, float] = field(default_factory=dict)
    """Labelled accuracies (e.g. ``knn_top1``, ``linear_top1``) when the data has labels: for the table only."""
    steps: int = 0
    """Optimiser steps the trial took."""
    pruned: bool = False
    """The trainer stopped because ``report`` returned ``True``."""


@dataclass(frozen=True)
class TuneSettings:
    """``vicreg tune``: the search around the training configuration given by --preset / --config / flags."""

    out: Path = Path("runs/tune")
    """Study folder: the study database (unless --storage), the trials table, best.yaml, plots, trial runs."""
    budget_minutes: float = 60.0
    """Total wall-clock minutes: trials are started while one more fits (and, with --then-train, the final run)."""
    trial_minutes: float = 5.0
    """Training minutes of each trial (the trainer's own budget: it fixes its steps to end on time)."""
    n_trials: int | None = None
    """Stop after this many trials started by this process (default: as many as the budget allows)."""
    space: Path | None = None
    """Search-space YAML: dotted config keys mapped to {low, high[, log][, step]}, {choices: [...]} or a fixed
    value; merged into the default space (``defaults: false`` in the file drops the default space)."""
    storage: str = ""
    """Optuna storage URL (sqlite:///..., postgresql://..., mysql://...); default sqlite:///OUT/study.db."""
    study: str = ""
    """Study name inside the storage (default: the name of the study folder); same name = same study."""
    criterion: str = "lidar"
    """Label-free score to maximise: lidar, rankme, alpha_req (closeness of alpha to 1), rankme_vs_init,
    lidar_vs_init or rankme_moved (RankMe times 1 - CKA to the random-init representation)."""
    prune: bool = True
    """Stop trials whose intermediate score is below the median of earlier trials at the same step."""
    prune_startup_trials: int = 3
    """Trials that run to the end before pruning starts (the median needs something to compare with)."""
    prune_after_reports: int = 2
    """A trial is not pruned on its first reports (every encoder starts with its random-init rank)."""
    startup_trials: int = 8
    """Random trials before TPE starts to model the good region."""
    then_train: bool = False
    """Train the best configuration for the rest of the budget after the search, into OUT/final."""
    final_minutes: float = 0.0
    """With --then-train, minutes kept for the final training (0: a quarter of the budget); the search stops
    starting trials when only that is left."""
    seed: int | None = None
    """Seed of the sampler (default: a different one per process, so processes sharing a study do not propose
    the same configurations)."""
    log: str = "tensorboard"
    """Trackers, comma-separated: tensorboard, mlflow, wandb. The study is the parent run, trials its children."""
    mlflow_uri: str = ""
    """MLflow tracking URI for --log mlflow (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."""
    heartbeat_seconds: int = 60
    """Optuna heartbeat of running trials in the database; a trial silent for 3 heartbeats (another machine that
    died) is marked failed and queued again. 0 turns it off."""

    def __post_init__(self) -> None:
        for name in ("budget_minutes", "trial_minutes"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number of minutes, got {value!r}")
        if self.trial_minutes > self.budget_minutes:
            raise ValueError(
                f"--trial-minutes {self.trial_minutes:g} exceeds --budget-minutes {self.budget_minutes:g}; "
                "give the search a budget of several trials"
            )
        if self.n_trials is not None and self.n_trials < 1:
            raise ValueError(f"--n-trials must be >= 1 (or omitted), got {self.n_trials}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown --criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.final_minutes < 0 or (self.then_train and self.final_minutes >= self.budget_minutes):
            raise ValueError(
                f"--final-minutes {self.final_minutes:g} must be >= 0 and leave time to search within "
                f"--budget-minutes {self.budget_minutes:g}"
            )
        for name in ("prune_startup_trials", "prune_after_reports", "startup_trials", "heartbeat_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        parse_backends(self.log)


# ------------------------------------------------------------------------------------------------ search space

EXPANDER_WIDTH = "expander_width"
"""A search dimension that is not a config key: every layer of model.expander at one width."""


@dataclass(frozen=True)
class Dimension:
    """One searched (or fixed) setting: a dotted config key (or ``expander_width``) and how to draw it."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple[Any, ...] | None = None
    fixed: Any = None
    """Not searched: this value in every trial (when ``low``, ``high`` and ``choices`` are all None)."""

    def suggest(self, trial: Any) -> Any:
        """The value of this dimension for an Optuna trial (``trial.suggest_*``)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.low is None or self.high is None:
            return self.fixed
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


VIEW_STRENGTH: dict[str, Dimension] = {
    "image": Dimension("views.crop_scale_min", 0.08, 0.6),
    "signal": Dimension("signal_views.crop_scale_min", 0.3, 0.95),
    "table": Dimension("table_views.corrupt_rate", 0.2, 0.8),
}
"""The default view-strength dimension of each modality (a table of data, read once by :func:`default_space`)."""


def default_space(base: TrainConfig) -> dict[str, Dimension]:
    """The default search space around ``base``: base lr (log, /16 to x4), the variance and covariance weights
    relative to the fixed invariance weight (log), expander width (half, same, double), the views' strength
    (crop scale minimum; table corruption rate) and weight decay (log, /10 to x10)."""
    lr, wd = base.optim.base_lr, base.optim.weight_decay
    space = [Dimension("optim.base_lr", lr / 16, lr * 4, log=True)]
    if base.loss.std_coeff > 0:
        space.append(Dimension("loss.std_coeff", base.loss.std_coeff / 5, base.loss.std_coeff * 2, log=True))
    if base.loss.cov_coeff > 0:
        space.append(Dimension("loss.cov_coeff", base.loss.cov_coeff / 25, base.loss.cov_coeff * 10, log=True))
    width = parse_expander_spec(base.model.expander)[0]
    space.append(Dimension(EXPANDER_WIDTH, choices=tuple(sorted({max(width // 2, 32), width, width * 2}))))
    if base.modality in VIEW_STRENGTH:
        space.append(VIEW_STRENGTH[base.modality])
    space.append(
        Dimension("optim.weight_decay", wd / 10, wd * 10, log=True)
        if wd > 0
        else Dimension("optim.weight_decay", 1e-6, 1e-3, log=True)
    )
    return {d.key: d for d in space}


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def apply_params(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """``base`` with a trial's parameters (dotted config keys and ``expander_width``) applied and validated."""
    flat = dict(params)
    width = flat.pop(EXPANDER_WIDTH, None)
    if width is not None:
        depth = len(parse_expander_spec(base.model.expander))
        flat["model.expander"] = "-".join([str(int(width))] * depth)
    return merge(base, _nested(flat))


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return number


def _dimension(where: str, key: str, spec: Any, base: TrainConfig) -> Dimension:
    """One entry of a search-space file, checked against the config (its type, its range) in one line."""
    current = parse_expander_spec(base.model.expander)[0] if key == EXPANDER_WIDTH else _lookup(base, key, where)
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}; use low, high, log, step or choices")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices or set(spec) != {"choices"}:
                raise ValueError(f"{where}: choices must be a non-empty list and stand alone, e.g. {{choices: [a, b]}}")
            for c in choices:
                _check_value(base, key, c, where)
            return Dimension(key, choices=tuple(choices))
        if "low" not in spec or "high" not in spec:
            raise ValueError(f"{where}: a range needs low and high, e.g. {{low: 0.1, high: 10, log: true}}")
        low, high = _number(f"{where}: low", spec["low"]), _number(f"{where}: high", spec["high"])
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ValueError(f"{where}: log must be true or false, got {log!r}")
        if not low < high:
            raise ValueError(f"{where}: low ({low:g}) must be below high ({high:g})")
        if log and low <= 0:
            raise ValueError(f"{where}: a log range needs low > 0, got {low:g}")
        step = None if spec.get("step") is None else _number(f"{where}: step", spec["step"])
        if step is not None and (step <= 0 or log):
            raise ValueError(f"{where}: step must be > 0 and cannot be combined with log")
        integer = isinstance(current, int) and not isinstance(current, bool)
        for value in (low, high):
            _check_value(base, key, int(value) if integer else value, where)
        return Dimension(key, low, high, log=log, step=step, integer=integer)
    _check_value(base, key, spec, where)
    return Dimension(key, fixed=spec)


def _lookup(base: TrainConfig, key: str, where: str) -> Any:
    node: Any = base
    for part in key.split("."):
        if not hasattr(node, "__dataclass_fields__") or part not in node.__dataclass_fields__:
            raise ValueError(f"{where}: {key!r} is not a training config key (e.g. optim.base_lr, loss.std_coeff)")
        node = getattr(node, part)
    if hasattr(node, "__dataclass_fields__"):
        raise ValueError(f"{where}: {key!r} is a section; name one of its keys, e.g. {key}.<name>")
    return node


def _check_value(base: TrainConfig, key: str, value: Any, where: str) -> None:
    try:
        apply_params(base, {key: value})
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def load_space(path: Path | None, base: TrainConfig) -> dict[str, Dimension]:
    """The search space: :func:`default_space` of ``base`` with the entries of the YAML file ``path`` merged in
    (a file with ``defaults: false`` replaces it). Every entry is checked against the config; a bad one is
    refused in one line naming the file and the key."""
    space = default_space(base)
    if path is None:
        return space
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search-space file {path} does not exist; pass a YAML file to --space")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"search-space file {path} is not valid YAML: {err}".replace("\n", " ")) from err
    if not isinstance(data, Mapping):
        raise ValueError(f"search-space file {path} must map config keys to ranges, got {type(data).__name__}")
    data = dict(data)
    keep_defaults = data.pop("defaults", True)
    if not isinstance(keep_defaults, bool):
        raise ValueError(f"search-space file {path}: defaults must be true or false, got {keep_defaults!r}")
    if not keep_defaults:
        space = {}
    for key, spec in data.items():
        space[str(key)] = _dimension(f"search-space file {path}: {key}", str(key), spec, base)
    if not any(d.fixed is None for d in space.values()):
        raise ValueError(f"search-space file {path} leaves nothing to search; give at least one range or choices")
    return space


# ------------------------------------------------------------------------------------------------ the study


@dataclass(frozen=True)
class TuneResult:
    study: str
    storage: str
    folder: Path
    trials: int
    """Trials in the study (all processes, all states)."""
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    """best.yaml, for ``vicreg train --config``."""
    final: TrialOutcome | None = None
    """The --then-train run's outcome."""


def _storage_url(settings: TuneSettings, folder: Path) -> str:
    return settings.storage or f"sqlite:///{(folder / 'study.db').resolve()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _fail_orphans(study: Any, storage: Any, retry: Callable[[Any, Any], None], say: Callable[[str], None]) -> int:
    """Mark FAIL (and queue again) the RUNNING trials of this machine whose process has died (kill -9)."""
    import optuna

    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != host or not isinstance(pid, int) or pid == os.getpid() or _alive(pid):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
            retry(study, storage.get_trial(trial_id))
            say(f"trial {trial.number} was left running by process {pid}, which is gone: marked failed, queued again")
            count += 1
    return count


def _open_study(settings: TuneSettings, folder: Path, say: Callable[[str], None]) -> tuple[Any, str]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = _storage_url(settings, folder)
    with warnings.catch_warnings():  # optuna >= 4.9 renamed the callback; both are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        retry = (retry_class or optuna.storages.RetryFailedTrialCallback)(max_retry=2)
    heartbeat: dict[str, Any] = {}
    if settings.heartbeat_seconds > 0:
        heartbeat = {
            "heartbeat_interval": settings.heartbeat_seconds,
            "grace_period": 3 * settings.heartbeat_seconds,
            "failed_trial_callback": retry,
        }
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters:
        heartbeat["heartbeat_stale_trial_callback"] = heartbeat.pop("failed_trial_callback", None)  # optuna >= 4.9
    # two processes creating one SQLite database's tables at once: the second fails ("table studies already exists")
    with FileLock(str(folder / ".storage.lock"), timeout=300), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)
    name = settings.study or folder.resolve().name
    startup = settings.startup_trials
    sampler = optuna.samplers.TPESampler(n_startup_trials=startup, seed=settings.seed, constant_liar=True)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup_trials)
        if settings.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True
    )
    _fail_orphans(study, storage, retry, say)
    return study, url


def run_tune(
    settings: TuneSettings,
    base: TrainConfig,
    train_fn: Callable[[TrainConfig, Report], TrialOutcome],
    *,
    clock: Callable[[], float] = time.monotonic,
    say: Callable[[str], None] = print,
) -> TuneResult:
    """Search hyper-parameters around ``base`` with ``train_fn`` as the trainer (see the module docstring).

    ``clock`` (seconds) decides how many trials fit in the budget (injectable for tests); ``say`` prints lines.
    """
    try:
        import optuna
    except ImportError as err:
        raise ImportError("vicreg tune needs Optuna; install it with: pip install 'vicreg[tune]'") from err

    started = clock()
    folder = Path(settings.out)
    folder.mkdir(parents=True, exist_ok=True)
    space = load_space(settings.space, base)
    study, url = _open_study(settings, folder, say)
    final_minutes = (settings.final_minutes or settings.budget_minutes / 4) if settings.then_train else 0.0
    search_minutes = settings.budget_minutes - final_minutes
    before = len(study.trials)
    say(
        f"vicreg tune: study {study.study_name!r} in {url} ({before} earlier trials); "
        f"{settings.trial_minutes:g}-minute trials within {search_minutes:g} minutes, "
        f"maximising {settings.criterion} (no labels)"
    )
    say("  searching " + ", ".join(_describe(d) for d in space.values() if d.fixed is None))
    trackers = open_trackers(settings.log, folder, study.study_name, mlflow_uri=settings.mlflow_uri, study=True)
    trackers.log_params({"tune": {k: str(v) for k, v in vars(settings).items()}, "base": config_to_dict(base)})

    def objective(trial: Any) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = {key: dim.suggest(trial) for key, dim in space.items()}
        run = Path(trial.user_attrs.get("run") or folder / "trials" / f"{trial.number:04d}")
        trial.set_user_attr("run", str(run))
        cfg = replace(apply_params(base, params), out=run, budget_minutes=settings.trial_minutes)
        child = trackers.child(f"trial-{trial.number:04d}", run)
        child.log_params({"trial": trial.number, **params})
        reports = 0

        def report(step: int, scores: Mapping[str, float]) -> bool:
            nonlocal reports
            reports += 1
            child.log_scalars(scores, step)
            value = selection_score(scores, settings.criterion)
            if not math.isfinite(value):
                return False
            trial.report(value, step)
            return reports > settings.prune_after_reports and trial.should_prune()

        began = clock()
        try:
            outcome = train_fn(cfg, report)
        except FloatingPointError as err:  # the run diverged: a bad region, ranked below every finished trial
            child.finish("failed")
            trial.set_user_attr("diverged", (str(err).splitlines() or ["non-finite loss"])[0][:300])
            trial.set_user_attr("minutes", round((clock() - began) / 60, 2))
            raise optuna.TrialPruned(f"diverged: {err}") from None
        except BaseException:
            child.finish("failed")
            raise
        trial.set_user_attr("minutes", round((clock() - began) / 60, 2))
        trial.set_user_attr("steps", outcome.steps)
        for key, value in outcome.scores.items():
            trial.set_user_attr(f"score.{key}", float(value))
        for key, value in outcome.accuracy.items():
            trial.set_user_attr(f"accuracy.{key}", float(value))
        value = selection_score(outcome.scores, settings.criterion)
        child.log_scalars({f"final.{k}": v for k, v in outcome.scores.items()} | {"score": value}, outcome.steps)
        child.finish("killed" if outcome.pruned else "finished")
        if outcome.pruned:
            raise optuna.TrialPruned(f"pruned at step {outcome.steps}")
        if not math.isfinite(value):
            raise ValueError(f"trial {trial.number}: the trainer returned no finite {settings.criterion} score")
        return value

    def after(study: Any, trial: Any) -> None:
        words = trial.state.name.lower()
        if "diverged" in trial.user_attrs:
            words = "diverged"
        value = "" if trial.value is None else f" score {trial.value:.4g}"
        best = _best(study)
        best_words = "" if best is None else f"; best {best.value:.4g} (trial {best.number})"
        say(f"trial {trial.number}: {words}{value} in {trial.user_attrs.get('minutes', 0):g} min{best_words}")
        if trial.value is not None:
            trackers.log_scalars({"score": trial.value, **({"best": best.value} if best else {})}, trial.number)
        write_outputs(study, base, space, folder, settings.criterion, plots=False)

    started_here = 0
    try:
        while settings.n_trials is None or started_here < settings.n_trials:
            elapsed = (clock() - started) / 60
            if elapsed + settings.trial_minutes > search_minutes:
                break
            study.optimize(objective, n_trials=1, callbacks=[after], gc_after_trial=False)
            started_here += 1
    finally:
        trackers.finish()
    best_config = write_outputs(study, base, space, folder, settings.criterion)
    best = _best(study)
    final = None
    if settings.then_train:
        final = _train_best(settings, best, base, folder, train_fn, started, clock, say)
    return TuneResult(
        study.study_name,
        url,
        folder,
        len(study.trials),
        None if best is None else best.number,
        None if best is None else best.value,
        {} if best is None else dict(best.params),
        best_config,
        final,
    )


def _train_best(
    settings: TuneSettings,
    best: Any,
    base: TrainConfig,
    folder: Path,
    train_fn: Callable[[TrainConfig, Report], TrialOutcome],
    started: float,
    clock: Callable[[], float],
    say: Callable[[str], None],
) -> TrialOutcome | None:
    if best is None:
        say("--then-train: no trial finished, so there is no configuration to train")
        return None
    left = settings.budget_minutes - (clock() - started) / 60
    if left <= 0:
        say("--then-train: the budget is spent; train best.yaml with vicreg train --config")
        return None
    cfg = replace(apply_params(base, best.params), out=folder / "final", budget_minutes=left)
    say(f"training the best configuration (trial {best.number}) for the remaining {left:.1f} minutes into {cfg.out}")
    return train_fn(cfg, lambda step, scores: False)


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no trial has finished yet
        return None


def _describe(d: Dimension) -> str:
    if d.choices is not None:
        return f"{d.key} in {list(d.choices)}"
    return f"{d.key} {d.low:g}..{d.high:g}{' (log)' if d.log else ''}"


# ------------------------------------------------------------------------------------------------ outputs


def _rows(study: Any) -> tuple[list[str], list[dict[str, Any]]]:
    trials = study.get_trials(deepcopy=False)
    params = sorted({k for t in trials for k in t.params})
    extra = sorted({k for t in trials for k in t.user_attrs if k.startswith("accuracy.")})
    columns = ["trial", "state", "score", "minutes", "steps", *params, *extra]
    rows = []
    for t in trials:
        state = "diverged" if "diverged" in t.user_attrs else t.state.name.lower()
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]  # a pruned trial: its last report
        row = {
            "trial": t.number,
            "state": state,
            "score": "" if value is None else round(value, 4),
            "minutes": t.user_attrs.get("minutes", ""),
            "steps": t.user_attrs.get("steps", ""),
        }
        row.update({k: _short(t.params.get(k, "")) for k in params})
        row.update({k: t.user_attrs.get(k, "") for k in extra})
        rows.append(row)
    return columns, rows


def _short(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def write_outputs(
    study: Any, base: TrainConfig, space: Mapping[str, Dimension], folder: Path, criterion: str, plots: bool = True
) -> Path | None:
    """trials.csv, trials.md, best.yaml and (``plots``) the plots of the study as it stands; returns best.yaml's
    path (None before a trial has finished)."""
    columns, rows = _rows(study)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _write(folder / "trials.csv", text.getvalue().encode())
    header = (
        f"# Study {study.study_name}\n\nscore: {criterion} on held-out rows, no labels; accuracy columns (when "
        "present) are for reading only and were never used to choose.\n\n"
    )
    _write(folder / "trials.md", (header + _markdown(columns, rows) + "\n").encode())
    if plots:
        _plot_scores(study, folder / "score.png", criterion)
        _plot_importance(study, folder / "importance.png")
    best = _best(study)
    if best is None:
        return None
    fixed = {k: d.fixed for k, d in space.items() if d.fixed is not None}
    cfg = replace(apply_params(base, {**fixed, **best.params}), out=folder / "best")
    comment = (
        f"# vicreg tune: the best of study {study.study_name!r}, trial {best.number}, {criterion} {best.value:.4g}\n"
        f"# vicreg train --config {folder / 'best.yaml'}\n"
    )
    path = folder / "best.yaml"
    _write(path, (comment + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)).encode())
    return path


def _plot_scores(study: Any, path: Path, criterion: str) -> None:
    import optuna

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], label="finished", color="tab:blue")
        best, line = -math.inf, []
        for t in sorted(done, key=lambda t: t.number):
            best = max(best, t.value)
            line.append((t.number, best))
        ax.step([n for n, _ in line], [v for _, v in line], where="post", color="tab:green", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="gray", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel(criterion)
    ax.set_title(f"{study.study_name}: label-free score per trial")
    if done or pruned:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def _plot_importance(study: Any, path: Path) -> None:
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importance = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError):  # too few finished trials, or nothing varied
        return
    if not importance:
        return
    names = list(importance)[::-1]
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna fANOVA, normalised)")
    ax.set_title(f"{study.study_name}: what the score depends on")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _write(path, buffer.getvalue())


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
