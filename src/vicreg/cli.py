"""The ``vicreg`` command line: one sub-command per task, generated with tyro from typed dataclasses/functions.

``vicreg train --preset NAME [--config FILE.yaml] [--flag value ...]``: the preset gives every default, the
YAML file overrides it, the flags override both. The resolved configuration is written to the run folder.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import tyro

from vicreg.config import PRESETS, TrainConfig, load_config_file

TRAIN_HELP = (
    "Pretrain an encoder with VICReg (resumes automatically when --out holds a checkpoint).\n\n"
    "Read first, in this order, then overridden by the flags below:\n"
    f"  --preset NAME        one of: {', '.join(PRESETS)} (default: the defaults shown below)\n"
    "  --config FILE.yaml   a YAML mapping of the same keys (nested sections as mappings)\n\n"
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
        return tyro.cli(TrainConfig, default=base, args=args, prog="vicreg train", description=TRAIN_HELP)
    except ValueError as err:  # a validation error of the dataclasses
        raise SystemExit(f"vicreg train: {err}") from err


def train(args: list[str]) -> None:
    from vicreg.train import train as run_training

    cfg = parse_train_args(args)
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


def export(
    checkpoint: tyro.conf.Positional[Path],
    out: Path = Path("backbone.safetensors"),
) -> None:
    """Write the backbone of a run folder or checkpoint as .safetensors or .pt (loads into the torchvision
    model with strict=True)."""
    from vicreg.checkpoint import export_backbone, load_checkpoint

    path = checkpoint / "checkpoints" / "last.pt" if checkpoint.is_dir() else checkpoint
    state = load_checkpoint(path)
    prefix = "backbone."
    backbone = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not backbone:
        raise SystemExit(f"vicreg export: {path} holds no backbone weights")
    print(f"wrote {export_backbone(backbone, out)} ({len(backbone)} tensors)")


def info() -> None:
    """Print the versions and the compute devices this installation sees."""
    import torch
    import torchvision

    import vicreg

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


COMMANDS: dict[str, Callable[..., Any]] = {"train": _train_help_only, "export": export, "info": info}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vicreg`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "train":
        train(args[1:])
        return
    tyro.extras.subcommand_cli_from_dict(
        COMMANDS, args=args, prog="vicreg", description="VICReg self-supervised pretraining, evaluation and export."
    )


if __name__ == "__main__":
    main()
