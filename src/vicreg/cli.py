"""The ``vicreg`` command line: one sub-command per task, generated with tyro from typed dataclasses/functions.

``vicreg train --preset NAME [--config FILE.yaml] [--flag value ...]``: the preset gives every default, the
YAML file overrides it, the flags override both. The resolved configuration is written to the run folder.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import platform
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torchvision
import tyro
import yaml

import vicreg
from vicreg.build import load_encoder, run_dir_of
from vicreg.checkpoint import CheckpointError
from vicreg.config import PRESETS, TrainConfig, config_to_dict, load_config_file
from vicreg.data.folder import BadImageError
from vicreg.embed import EmbedArgs, embed_to_file
from vicreg.eval import EvalArgs, EvalSettings, eval_protocol, run_eval
from vicreg.export import default_out, export_encoder, resolve_format
from vicreg.neighbors import NeighborsArgs, run_neighbors
from vicreg.probes.table import format_table
from vicreg.report import ReportArgs, make_report
from vicreg.runlock import RunBusyError, hold_run
from vicreg.train import NonFiniteLossError
from vicreg.train import train as run_training

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
    except (ValueError, OSError) as err:
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
    result = run_training(cfg)
    if not result.is_main:
        return
    if result.metrics:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        print(f"step {result.step}: {summary}")
    print(f"run folder: {result.run_dir}")
    if result.interrupted:
        raise SystemExit(143)


def _train_help_only(
    preset: Annotated[str | None, tyro.conf.arg(help=f"one of: {', '.join(PRESETS)}")] = None,
    config: Path | None = None,
) -> None:
    """Pretrain an encoder with VICReg: `vicreg train --preset NAME [--config FILE.yaml] [--flags]`."""


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
    report = run_eval(run, args)
    d = report["data"]
    print(f"{d['train']} ({d['n_train']}) -> {d['test']} ({d['n_test']}): {d['split']}")
    for part in ("knn", "linear", "semi"):
        print(f"{part}: {report['protocol'][part]}")
    print(format_table(report))
    for name, note in report["notes"].items():
        print(f"{name}: {note}")
    print(f"wrote {report['path']}")


@_described_by(EmbedArgs.__doc__ or "")
def embed(run: RunPath, args: Annotated[EmbedArgs, tyro.conf.arg(name="")]) -> None:
    done = embed_to_file(run, args)
    print(f"wrote {done.path} ({done.rows} x {done.dim})")
    if done.index_file is not None:
        print(f"wrote {done.index_file} (the source row of each row)")
    if done.skipped:
        print(
            f"{done.rows} rows written; {len(done.skipped)} unreadable file(s) skipped (their rows are absent; see "
            "the index)"
        )


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
    print(f"wrote {make_report(run, args)}")


def export(
    checkpoint: RunPath,
    out: Path | None = None,
    format: Literal["safetensors", "pt", "hf", "onnx"] | None = None,
    branch: Literal["a", "b"] = "a",
    force: bool = False,
) -> None:
    """Write a run's backbone (encoder) in a format other tools load; checked before anything is written.

    Formats: safetensors (a state dict; our description of the encoder in its metadata), pt (a plain tensor dict
    for torch.load(weights_only=True)), hf (a folder: model.safetensors, config.json in timm's layout with the
    input size, channels, normalisation, feature size, vicreg version, training summary and eval numbers, and a
    README.md model card; vicreg.load_backbone(DIR) and timm load it) or onnx (dynamic batch; checked with
    onnxruntime against torch; pip install 'vicreg[onnx]').

    The check: the weights are loaded with strict=True into a freshly built backbone of the architecture the
    checkpoint describes and must give identical features (onnx: onnxruntime within 1e-4 of torch); a failed
    check leaves nothing at --out. An existing --out is replaced only when it is an earlier export of the same
    encoder (not in another run's folder); anything else needs --force.

    Args:
        out: the file (or folder for hf) to write (default: RUN/export/backbone.safetensors; .pt, .onnx or the
            folder RUN/export/hf with --format).
        format: safetensors, pt, hf or onnx (default: from the suffix of --out; a folder name means hf).
        branch: which encoder of a two-encoder run (b: branch B's own backbone).
        force: replace an existing --out that is not an earlier export of this run's encoder (a folder of other
            files is never replaced).
    """
    if out is not None:
        format = resolve_format(out, format)  # type: ignore[assignment]  # a suffix no writer makes: before any work
    enc = load_encoder(checkpoint)
    run_dir = run_dir_of(enc.checkpoint)
    target = out if out is not None else default_out(run_dir, format)
    backbone, spec = enc.branch(branch)
    inside = target.expanduser().resolve().is_relative_to(run_dir.resolve())
    hold = hold_run(run_dir, "export", timeout=10, fix=_BRIEF_FIX) if inside else contextlib.nullcontext()
    with hold:
        result = export_encoder(
            backbone.state_dict(), spec, target, format, summary=enc.summary(), force=force, run_dir=run_dir
        )
    print(f"wrote {result.path} ({result.format}): {result.check}")


_BRIEF_FIX = "wait for it to finish, or stop it"


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
    "eval": evaluate,
    "embed": embed,
    "report": report,
    "export": export,
    "neighbors": neighbors,
    "info": info,
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vicreg`` console script: every sub-command runs inside :func:`error_boundary`."""
    _survive_ascii_terminals()
    args = sys.argv[1:] if argv is None else list(argv)
    command = args[0] if args and args[0] in {"train", *COMMANDS} else ""
    with error_boundary(command):
        if command == "train":
            train(args[1:])
            return
        with _config_errors_as_value_errors():
            tyro.extras.subcommand_cli_from_dict(COMMANDS, args=args, prog="vicreg", description=DESCRIPTION)


def _survive_ascii_terminals() -> None:
    """In a C locale (or ``PYTHONIOENCODING=ascii``) stdout and stderr cannot encode the help's box drawing or a
    non-ASCII path: write such characters as escapes instead of failing with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent on captured streams (io.StringIO)
        if reconfigure is not None and (getattr(stream, "encoding", "") or "").lower() not in ("utf-8", "utf8"):
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


# ------------------------------------------------------------------------------------------------ errors

DEBUG_VARIABLE = "VICREG_DEBUG"

_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
    errno.EACCES: "check its permissions, or choose another path{other_out}",
    errno.EPERM: "check its permissions, or choose another path{other_out}",
    errno.EROFS: "the file system is read-only; choose another path{other_out}",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "it is a folder; give a file",
    errno.EFBIG: "the file is larger than this system allows; choose another folder",
}


def is_expected(err: BaseException) -> bool:
    """Whether ``err`` is a problem of the input or the machine that one line can explain (a bad value, key,
    path or file, a damaged checkpoint, a missing optional dependency, a full or read-only disk, a diverged
    run), rather than a bug, whose traceback is kept. A ValueError counts only when vicreg raised it."""
    expected = (CheckpointError, BadImageError, NonFiniteLossError, RunBusyError, ImportError, OSError, yaml.YAMLError)
    if isinstance(err, expected):
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


_OTHER_OUT = {
    "train": " (e.g. another --out)",
    "eval": " (e.g. another --out)",
    "embed": " (e.g. another --out)",
    "neighbors": " (e.g. another --out)",
    "export": " (e.g. another --out)",
    "report": " (report writes into the run folder: copy the run somewhere writable)",
}
"""What "choose another path" means for each command (``report`` has no ``--out``)."""


def describe_error(err: BaseException, command: str = "") -> str:
    """The message of an expected error for the person at the terminal: ours as written (they name the problem
    and, after a ';', the fix); an operating-system error as what failed, on which path, and what to do (in the
    words of ``command``'s flags)."""
    if isinstance(err, OSError) and err.errno in _OS_HINTS and err.strerror:
        where = f": {err.filename}" if err.filename is not None else ""
        also = f" -> {err.filename2}" if err.filename2 is not None else ""
        hint = _OS_HINTS[err.errno].format(other_out=_OTHER_OUT.get(command, ""))
        return f"{err.strerror}{where}{also}; {hint}"
    if isinstance(err, ModuleNotFoundError) and err.name and str(err).startswith("No module named"):
        return f"{err} (an optional dependency); install it: pip install {err.name.split('.')[0]}"
    if isinstance(err, yaml.YAMLError):
        return f"not valid YAML: {err}"
    text = cli_words(str(err).strip(), command) if "\n" not in str(err).strip() else str(err).strip()
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
        if _debug():
            default_show(message, category, filename, lineno, file, line)
        else:
            print(f"{prefix}: warning: {cli_words(str(message), command)}", file=sys.stderr, flush=True)

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
        raise SystemExit(f"{prefix}: {describe_error(err, command)}") from None
    finally:
        warnings.showwarning = default_show


_CLI_WORDS = (
    # (what the library says, what the command line says instead; {strict}: the flag, or nothing without one)
    (r"\s*The full list is in loader\.bad_files;\s*", " "),
    (r"\(strict=True; remove or fix the file, or pass strict=False to skip such files with a warning\)",
     "(--strict-data; remove or fix the file, or drop --strict-data to skip such files with a warning)"),
    (r"\s*\bstrict=True makes this an error\.?", "{strict}"),
    (r"pass labeled=False to read every image without labels",
     "move them into a class sub-folder, or point --data at a folder without class sub-folders"),
    (r"\bor pass labeled=None\b", "or use a folder of images without class sub-folders"),
    (r"which needs a size: load\(path, size=\.\.\.\)", "which needs a size: --image-size N"),
)  # fmt: skip


def cli_words(message: str, command: str = "") -> str:
    """A library message in the words of the command line: CLI flags instead of Python arguments (``strict=True``
    is ``--strict-data``, a flag of ``vicreg train`` only; ``labeled=False`` has no flag, so the fix is said in
    folders), no ``loader.bad_files`` (a Python attribute), on one line."""
    strict = " --strict-data makes this an error." if command == "train" else ""
    for pattern, words in _CLI_WORDS:
        message = re.sub(pattern, words.replace("{strict}", strict), message)
    return " ".join(message.split())


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


if __name__ == "__main__":
    main()
