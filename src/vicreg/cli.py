"""The ``vicreg`` command line: one sub-command per task, built with tyro from typed functions."""

from __future__ import annotations

import platform
import sys

import tyro


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


COMMANDS = {"info": info}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vicreg`` console script."""
    tyro.extras.subcommand_cli_from_dict(
        COMMANDS,
        args=sys.argv[1:] if argv is None else argv,
        description="VICReg self-supervised pretraining, evaluation and export.",
    )


if __name__ == "__main__":
    main()
