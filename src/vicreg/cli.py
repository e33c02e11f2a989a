"""The ``vicreg`` command line: one sub-command per task, generated with tyro from typed dataclasses/functions.

``vicreg train --preset NAME [--config FILE.yaml] [--flag value ...]``: the preset gives every default, the
YAML file overrides it, the flags override both. The resolved configuration is written to the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import os
import platform
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torchvision
import tyro
import yaml

import vicreg
from vicreg.build import (
    NoLabelsError,
    label_free_sample,
    load_encoder,
    measure_label_free,
    random_init_model,
    resolve_device,
    run_data_kind,
    run_dir_of,
)
from vicreg.checkpoint import CheckpointError, CheckpointWarning
from vicreg.config import PRESETS, TrainConfig, config_to_dict, load_config_file
from vicreg.data.folder import BadImageError
from vicreg.embed import EmbedArgs, embed_to_file
from vicreg.eval import EvalArgs, EvalSettings, eval_protocol, run_eval
from vicreg.export import export_encoder
from vicreg.neighbors import NeighborsArgs, run_neighbors
from vicreg.probes.label_free import format_label_free
from vicreg.probes.table import format_table
from vicreg.report import ReportArgs, make_report
from vicreg.runlock import RunBusyError, hold_run
from vicreg.stop import StopAborted, exit_status
from vicreg.train import NonFiniteLossError
from vicreg.train import train as run_training
from vicreg.tune import Report, TrialOutcome, TuneResult, TuneSettings, run_tune

TRAIN_HELP = (
    "Pretrain an encoder with VICReg (resumes automatically when --out holds a checkpoint).\n\n"
    "Read first, in this order, then overridden by the flags below:\n"
    f"  --preset NAME        one of: {', '.join(PRESETS)} (default: the defaults shown below)\n"
    "  --config FILE.yaml   a YAML mapping of the same keys (nested sections as mappings)\n"
    "  --print-config       print the resolved configuration as YAML (a file for --config) and exit\n\n"
    "Under torchrun, every process runs the same command: torchrun --nproc-per-node 4 -m vicreg train ..."
)


def _pop_option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove ``--name VALUE`` / ``--name=VALUE`` from ``args``; return the value and the rest."""
    rest, value, i = [], None, 0
    while i < len(args):
        arg = args[i]
        if arg == name:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise SystemExit(f"vicreg train: {name} needs a value")
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def parse_train_args(args: list[str]) -> TrainConfig:
    """The :class:`TrainConfig` of a ``vicreg train`` command line (without the sub-command name)."""
    preset, args = _pop_option(list(args), "--preset")
    config_file, args = _pop_option(args, "--config")
    if preset is not None and preset not in PRESETS:
        raise SystemExit(f"vicreg train: unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else TrainConfig()
    try:
        if config_file:
            base = load_config_file(config_file, base)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"vicreg train: {err}") from err
    try:
        with _config_errors_as_value_errors():
            return tyro.cli(TrainConfig, default=base, args=args, prog="vicreg train", description=TRAIN_HELP)
    except ValueError as err:  # a validation error of the dataclasses
        raise SystemExit(f"vicreg train: {err}") from err


class _RejectedValue(ValueError):
    """A value the configuration's validation refused while tyro built it."""


@contextlib.contextmanager
def _config_errors_as_value_errors() -> Iterator[None]:
    """Make tyro hand the dataclasses' validation errors (e.g. ``optim.base_lr must be a positive number``) back
    as ValueError, for the one-line error, instead of drawing them in a box. Uses tyro's parse-error hook where
    this tyro version has it (1.0+); otherwise tyro reports them itself."""
    hooks = getattr(tyro, "_errors", None)
    if hooks is None or not hasattr(hooks, "on_parse_error") or not hasattr(hooks, "InstantiationFailure"):
        yield
        return

    def reraise(event: Any) -> None:
        if isinstance(event, hooks.InstantiationFailure):
            flag = getattr(event.argument, "display_name", None)
            name = flag() if callable(flag) else None
            raise _RejectedValue(f"{name}: {event.message}" if name and name not in event.message else event.message)

    with hooks.on_parse_error(reraise):
        yield


def train(args: list[str]) -> None:
    show = "--print-config" in args
    cfg = parse_train_args([a for a in args if a != "--print-config"])
    if show:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return
    try:
        result = run_training(cfg)
    except StopAborted as abort:  # a second signal before the stop's checkpoint was saved
        print(
            f"vicreg train: stopped without saving (a second signal); the previous checkpoint in "
            f"{cfg.out / 'checkpoints'} is intact",
            file=sys.stderr,
        )
        raise SystemExit(exit_status(abort.signum)) from None
    if result.interrupted and not result.is_main:
        raise SystemExit(exit_status(result.stop_signal or 15))
    if not result.is_main:
        return
    if result.metrics:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        print(f"step {result.step}: {summary}")
    print(f"run folder: {result.run_dir}")
    if result.interrupted:  # 143 for SIGTERM, 130 for SIGINT (the shell's 128 + signal number)
        raise SystemExit(exit_status(result.stop_signal or 15))


def _train_help_only(
    preset: Annotated[str | None, tyro.conf.arg(help=f"one of: {', '.join(PRESETS)}")] = None,
    config: Path | None = None,
) -> None:
    """Pretrain an encoder with VICReg: `vicreg train --preset NAME [--config FILE.yaml] [--flags]`."""


TUNE_HELP = (
    "Choose the hyper-parameters of a VICReg run without labels (Optuna: TPE sampler, median pruner). Each trial "
    "is a --trial-minutes training run scored on held-out rows by a label-free measure (--criterion, LiDAR by "
    "default); labels, when the data has them, give kNN / linear columns in the trials table and are never used "
    "to choose. Writes OUT/trials.md, OUT/best.yaml (for vicreg train --config), score.png, importance.png; "
    "re-running the same command continues the study.\n\n"
    "The base configuration is read as vicreg train reads it, then searched around:\n"
    f"  --preset NAME        one of: {', '.join(PRESETS)}\n"
    "  --config FILE.yaml   a YAML mapping of training keys (e.g. a best.yaml)\n"
    "  --<train flag> V     any vicreg train flag (e.g. --data FOLDER, --batch-size 128); the flags below are the "
    "tune's own (--out, --budget-minutes, --seed and --log mean the study's)\n\n"
    "Example: vicreg tune --preset fashion-mnist-cpu --budget-minutes 60 --trial-minutes 5 --out runs/tune"
)


def _tune_flags() -> tuple[set[str], set[str]]:
    """The flags of :class:`TuneSettings`: those that take a value, and the switches (``--x`` / ``--no-x``)."""
    values, switches = set(), set()
    for f in dataclasses.fields(TuneSettings):
        flag = f.name.replace("_", "-")
        if f.type in ("bool", bool):
            switches |= {f"--{flag}", f"--no-{flag}"}
        else:
            values.add(f"--{flag}")
    return values, switches


def parse_tune_args(args: list[str]) -> tuple[TuneSettings, TrainConfig]:
    """The settings and the base training configuration of a ``vicreg tune`` command line: the tune's own flags
    go to :class:`TuneSettings`, the rest (``--preset``, ``--config``, training flags) to :func:`parse_train_args`."""
    values, switches = _tune_flags()
    tune_args: list[str] = []
    train_args: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0].replace("_", "-")
        if arg in ("-h", "--help") or name in switches:
            tune_args.append(arg)
        elif name in values:
            tune_args += [arg] if "=" in arg else args[i : i + 2]
            i += 0 if "=" in arg else 1
        else:
            train_args.append(arg)
        i += 1
    base = parse_train_args(train_args)
    with _config_errors_as_value_errors():
        settings = tyro.cli(TuneSettings, args=tune_args, prog="vicreg tune", description=TUNE_HELP)
    return settings, base


def tune_trainer(
    base: TrainConfig, *, rows: int = 2000, probe_epochs: int = 20
) -> Callable[[TrainConfig, Report], TrialOutcome]:
    """vicreg tune's trainer (:mod:`vicreg.tune`'s ``train_fn``): :func:`vicreg.train.train` with the pruner's
    ``report``, then the final label-free scores of the trained encoder on ``rows`` held-out rows of the base
    config's data, with its views (the same for every trial) and the random-init comparison; kNN / linear top-1
    when the data has labels (the trials table only). The trials' own trackers are TensorBoard: the study's
    ``--log`` holds them as child runs."""
    samples: dict[str, Any] = {}

    def train_fn(cfg: TrainConfig, report: Report) -> TrialOutcome:
        result = run_training(replace(cfg, log="tensorboard"), report=report, label_free_views=base)
        if result.interrupted:
            raise KeyboardInterrupt(f"stopped by signal at step {result.step}")
        if result.pruned:
            return TrialOutcome(result.label_free, steps=result.step, pruned=True)
        device = resolve_device(cfg.device)
        enc = load_encoder(result.run_dir, device)
        if "sample" not in samples:  # the same rows and views for every trial
            kind = run_data_kind(base)
            samples["sample"] = label_free_sample(
                kind, base, enc.spec, base.data, rows=rows, seed=base.seed, download=base.download
            )
        init = random_init_model(enc, base.seed).to(device)
        scores = measure_label_free(samples["sample"], enc.model, device, init_model=init, seed=base.seed)
        return TrialOutcome(scores, _trial_accuracy(result.run_dir, cfg, probe_epochs), steps=result.step)

    return train_fn


def _trial_accuracy(run_dir: Path, cfg: TrainConfig, probe_epochs: int) -> dict[str, float]:
    """kNN (k = 20) and linear top-1 of a trial when its data has labels, else nothing."""
    protocol = EvalSettings(k=(20,), probe_epochs=probe_epochs, fractions=())
    args = EvalArgs(device=cfg.device, baselines=False, label_free=False, cache=False, protocol=protocol)
    try:
        report = run_eval(run_dir, replace(args, out=run_dir / "eval.json"))
    except NoLabelsError:
        return {}
    ours = report["results"]["vicreg"]
    return {"knn_top1": ours["knn"]["k20"]["top1"], "linear_top1": ours["linear"]["last_top1"]}


def tune(args: list[str]) -> None:
    settings, base = parse_tune_args(args)
    result: TuneResult = run_tune(settings, base, tune_trainer(base))
    print(f"study {result.study!r}: {result.trials} trials in {result.storage}")
    if result.best_number is not None and result.best_value is not None:
        params = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.best_params.items()
        )
        print(f"best: trial {result.best_number}, {settings.criterion} {result.best_value:.4g} ({params})")
    print(f"trials table: {result.folder / 'trials.md'}")
    if result.best_config is not None:
        print(f"best configuration: {result.best_config} (vicreg train --config {result.best_config})")
    if result.final is not None:
        print(f"trained the best configuration into {result.folder / 'final'} ({result.final.steps} steps)")


def _tune_help_only(
    preset: Annotated[str | None, tyro.conf.arg(help=f"one of: {', '.join(PRESETS)}")] = None,
    config: Path | None = None,
) -> None:
    """Tune without labels: `vicreg tune --preset NAME --budget-minutes M [--trial-minutes T] [--flags]`."""


RunPath = Annotated[
    tyro.conf.Positional[Path],
    tyro.conf.arg(metavar="RUN_OR_CHECKPOINT", help="run folder (the --out of vicreg train) or checkpoint file"),
]
"""The positional argument of the commands that read a trained run."""


def _described_by(*parts: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Use ``parts`` (a settings dataclass's docstring, ...) as the command's help: written once, where the
    settings are."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        command.__doc__ = "\n\n".join(inspect.cleandoc(part) for part in parts if part)
        return command

    return decorate


def _protocol_help() -> str:
    lines = [f"{name}: {text}." for name, text in eval_protocol(EvalSettings()).items()]
    return "\n\n".join(["The protocol (with the default settings; eval.json records the one used):", *lines])


@_described_by(EvalArgs.__doc__ or "", _protocol_help())
def evaluate(run: RunPath, args: Annotated[EvalArgs, tyro.conf.arg(name=""), tyro.conf.OmitArgPrefixes]) -> None:
    with _brief_hold(run, "eval"):
        report = run_eval(run, args)
    d = report["data"]
    if report["results"]:
        print(f"{d['train']} ({d['n_train']}) -> {d['test']} ({d['n_test']}): {d['split']}")
        for part in ("knn", "linear", "semi"):
            print(f"{part}: {report['protocol'][part]}")
        print(format_table(report))
    if report["label_free"]:
        print(f"label-free: {report['protocol']['label_free']}")
        print(f"label-free sample: {report['label_free']['sample']}")
        print(format_label_free(report["label_free"]))
    for name, note in report["notes"].items():
        print(f"{name}: {note}")
    print(f"wrote {report['path']}")


@_described_by(EmbedArgs.__doc__ or "")
def embed(run: RunPath, args: Annotated[EmbedArgs, tyro.conf.arg(name="")]) -> None:
    path, rows, dim = embed_to_file(run, args)
    print(f"wrote {path} ({rows} x {dim})")


@_described_by(NeighborsArgs.__doc__ or "")
def neighbors(run: RunPath, args: Annotated[NeighborsArgs, tyro.conf.arg(name="")]) -> None:
    result = run_neighbors(run, args)
    print(result.summary)
    for path in result.files:
        print(f"wrote {path}")


@_described_by(ReportArgs.__doc__ or "")
def report(
    run: Annotated[
        tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN_DIR", help="run folder (vicreg train --out)")
    ],
    args: Annotated[ReportArgs, tyro.conf.arg(name="")],
) -> None:
    with _brief_hold(run, "report"):
        path = make_report(run, args)
    print(f"wrote {path}")


def export(
    checkpoint: RunPath,
    out: Path = Path("backbone.safetensors"),
    format: Literal["safetensors", "pt", "hf", "onnx"] | None = None,
    branch: Literal["a", "b"] = "a",
) -> None:
    """Write a run's backbone (encoder) in a format other tools load; checked before anything is written.

    Formats: safetensors (a state dict; our description of the encoder in its metadata), pt (a plain tensor dict
    for torch.load(weights_only=True)), hf (a folder: model.safetensors, config.json in timm's layout with the
    input size, channels, normalisation, feature size, vicreg version, training summary and eval numbers, and a
    README.md model card; vicreg.load_backbone(DIR) and timm load it) or onnx (dynamic batch; checked with
    onnxruntime against torch; pip install 'vicreg[onnx]').

    The check: the weights are loaded with strict=True into a freshly built backbone of the architecture the
    checkpoint describes and must give identical features (onnx: onnxruntime within 1e-4 of torch); a failed
    check leaves nothing at --out.

    Args:
        out: the file (or folder for hf) to write.
        format: safetensors, pt, hf or onnx (default: from the suffix of --out; a folder name means hf).
        branch: which encoder of a two-encoder run (b: branch B's own backbone).
    """
    enc = load_encoder(checkpoint)
    backbone, spec = enc.branch(branch)
    into_run = Path(out).expanduser().resolve().is_relative_to(_run_folder(checkpoint))
    with _brief_hold(checkpoint, "export") if into_run else contextlib.nullcontext():
        result = export_encoder(backbone.state_dict(), spec, out, format, summary=enc.summary())
    print(f"wrote {result.path} ({result.format}): {result.check}")


def _run_folder(run: Path) -> Path:
    """The run folder of a RUN_OR_CHECKPOINT argument."""
    run = Path(run).expanduser().resolve()
    return run if run.is_dir() else run_dir_of(run)


@contextlib.contextmanager
def _brief_hold(run: Path, command: str) -> Iterator[None]:
    """The run folder's lock (:mod:`vicreg.runlock`) for a command that writes into it: waits up to 10 s for its
    holder, then refuses naming it (e.g. a `vicreg train` still running). A folder where no lock file can be
    created (read-only) is not locked: the command's own writes there fail with their own message."""
    fix = "wait for it to finish (or stop it), then run this again"
    try:
        hold = hold_run(_run_folder(run), command, timeout=10, fix=fix)
        hold.__enter__()
    except PermissionError:
        yield
        return
    except OSError as err:
        if err.errno != errno.EROFS:
            raise
        yield
        return
    try:
        yield
    finally:
        hold.__exit__(None, None, None)


def info() -> None:
    """Print the versions and the compute devices this installation sees."""
    print(f"vicreg      {vicreg.__version__}")
    print(f"python      {platform.python_version()}")
    print(f"torch       {torch.__version__}")
    print(f"torchvision {torchvision.__version__}")
    print(f"cpu threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}      {torch.cuda.get_device_name(i)}")
    else:
        print("cuda        not available")


DESCRIPTION = "VICReg self-supervised pretraining, evaluation and export."
COMMANDS: dict[str, Callable[..., Any]] = {
    "train": _train_help_only,
    "tune": _tune_help_only,
    "eval": evaluate,
    "embed": embed,
    "report": report,
    "export": export,
    "neighbors": neighbors,
    "info": info,
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vicreg`` console script: every sub-command runs inside :func:`error_boundary`."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = args[0] if args and args[0] in {"train", *COMMANDS} else ""
    with error_boundary(command):
        if command == "train":
            train(args[1:])
            return
        if command == "tune":
            tune(args[1:])
            return
        with _config_errors_as_value_errors():
            tyro.extras.subcommand_cli_from_dict(COMMANDS, args=args, prog="vicreg", description=DESCRIPTION)


# ------------------------------------------------------------------------------------------------ errors

DEBUG_VARIABLE = "VICREG_DEBUG"

_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
    errno.EACCES: "check its permissions, or choose another path (e.g. another --out)",
    errno.EPERM: "check its permissions, or choose another path (e.g. another --out)",
    errno.EROFS: "the file system is read-only; choose another path (e.g. another --out)",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "it is a folder; give a file",
    errno.EFBIG: "the file is larger than this system allows; choose another folder",
}


def is_expected(err: BaseException) -> bool:
    """Whether ``err`` is a problem of the input or the machine that one line can explain (a bad value, key,
    path or file, a damaged checkpoint, a missing optional dependency, a full or read-only disk, a diverged
    run), rather than a bug, whose traceback is kept. A ValueError counts only when vicreg raised it."""
    expected = CheckpointError | BadImageError | NonFiniteLossError | RunBusyError | ImportError | OSError
    if isinstance(err, expected | yaml.YAMLError):
        return True
    return isinstance(err, ValueError) and _raised_by_vicreg(err)


def _raised_by_vicreg(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


_PACKAGE = Path(vicreg.__file__).resolve().parent


def describe_error(err: BaseException) -> str:
    """The message of an expected error for the person at the terminal: ours as written (they name the problem
    and, after a ';', the fix); an operating-system error as what failed, on which path, and what to do."""
    if isinstance(err, OSError) and err.errno in _OS_HINTS and err.strerror:
        where = f": {err.filename}" if err.filename is not None else ""
        also = f" -> {err.filename2}" if err.filename2 is not None else ""
        return f"{err.strerror}{where}{also}; {_OS_HINTS[err.errno]}"
    if isinstance(err, ModuleNotFoundError) and err.name and str(err).startswith("No module named"):
        return f"{err} (an optional dependency); install it: pip install {err.name.split('.')[0]}"
    if isinstance(err, yaml.YAMLError):
        return f"not valid YAML: {err}"
    text = str(err).strip()
    return text or type(err).__name__


@contextlib.contextmanager
def error_boundary(command: str) -> Iterator[None]:
    """Turn an expected error (:func:`is_expected`) into ``vicreg <command>: <message>`` on stderr and exit
    status 1, without a traceback (``VICREG_DEBUG=1`` keeps it); anything else propagates with its traceback.
    Damaged checkpoints skipped for an earlier one are reported as one line too."""
    prefix = f"vicreg {command}" if command else "vicreg"
    default_show = warnings.showwarning

    def show(
        message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if issubclass(category, CheckpointWarning):
            print(f"{prefix}: warning: {message}", file=sys.stderr, flush=True)
        else:
            default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    except SystemExit as done:  # a one-line error of a sub-command: with VICREG_DEBUG, the error behind it
        if _debug() and isinstance(done.__cause__, Exception):
            raise done.__cause__ from None
        raise
    except Exception as err:
        if not is_expected(err) or _debug():
            raise
        raise SystemExit(f"{prefix}: {describe_error(err)}") from None
    finally:
        warnings.showwarning = default_show


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


if __name__ == "__main__":
    main()
