"""Opening a trained run for a command: :func:`open_run` loads its encoder on a device and gives the data kind
that reads the data asked for (the data root passed down as an argument, never through the environment);
:func:`encoder_features` gives the frozen features of rows, cached under the run folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vicreg.build.checkpoints import LoadedEncoder, load_encoder, random_init_model, run_dir_of
from vicreg.build.kinds import DataKind
from vicreg.build.runtime import autocast_dtype, resolve_device
from vicreg.config import config_to_dict
from vicreg.probes.cache import cached, file_identity, tensor_digest
from vicreg.probes.features import extract_features

__all__ = ["DataArgs", "OpenRun", "encoder_features", "open_run", "open_run_with"]


@dataclass(frozen=True, kw_only=True)
class DataArgs:
    """The data a command reads through a trained encoder, and where it runs (shared by eval, embed, neighbors
    and report)."""

    data: str | None = None
    """Dataset name or path, or hf:NAME / hf-stream:NAME (default: the run's training data)."""
    data_root: Path | None = None
    """Folder searched first for named datasets (default: the run's data_root, then $VICREG_DATA, then the user
    cache)."""
    download: bool = False
    """Allow downloading a named dataset."""
    data_column: str = ""
    """Hugging Face sources (hf:...): the image column (default: the run's, else found from the features)."""
    label_column: str = ""
    """Hugging Face sources: the label column (default: the run's, else the ClassLabel feature)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, mps or auto."""
    batch_size: int = 512
    """Rows per forward pass."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class OpenRun:
    """A trained run ready to read data through its encoder."""

    encoder: LoadedEncoder
    """The model in eval mode on :attr:`device`, with its description."""
    kind: DataKind
    """The data kind that reads :attr:`source` the way the encoder takes it."""
    source: str
    """The data asked for, or the run's training data."""
    device: torch.device
    run_dir: Path
    """The run folder (features are cached in ``run_dir / "features"``)."""


def open_run(
    run_or_checkpoint: str | os.PathLike[str],
    *,
    data: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    data_column: str = "",
    label_column: str = "",
) -> OpenRun:
    """Load the encoder of a run folder or checkpoint on ``device`` and the data kind that reads ``data``
    (default: the run's training data) for it. Named datasets are looked for in ``data_root`` (default: the
    run's ``data_root``) before ``$VICREG_DATA`` and the user cache."""
    dev = resolve_device(device) if isinstance(device, str) else device
    enc = load_encoder(run_or_checkpoint, dev)
    root = data_root if data_root is not None else enc.config.data_root
    kind = enc.kind_for(data, data_column=data_column, label_column=label_column, root=root)
    return OpenRun(enc, kind, str(data or enc.config.data), dev, run_dir_of(enc.checkpoint))


def open_run_with(run_or_checkpoint: str | os.PathLike[str], args: DataArgs) -> OpenRun:
    """:func:`open_run` with the data and device of a command's settings."""
    return open_run(
        run_or_checkpoint,
        data=args.data,
        data_root=args.data_root,
        device=args.device,
        data_column=args.data_column,
        label_column=args.label_column,
    )


def encoder_features(
    enc: LoadedEncoder,
    rows: Tensor,
    *,
    which: str = "vicreg",
    cache_dir: Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    precision: str = "fp32",
    seed: int = 0,
    labels: Tensor | None = None,
    track: Callable[[Iterable[Tensor]], Iterable[Tensor]] | None = None,
) -> tuple[Tensor, bool]:
    """Frozen features of ``rows`` (images, signals or table rows, as the run's data kind loads them).

    ``which``: ``vicreg`` (representation), ``expander`` (representation
    and expander output side by side, ``(N, feature_dim + embedding_dim)``) or ``random_init``.

    Cached under ``cache_dir`` (``None``: not cached). Returns ``(features, cache_hit)``. ``track`` wraps the row
    batches when they are computed (``Progress.batches(...)``; a cache hit computes nothing).
    """
    device = torch.device(device)
    if which == "random_init":
        model = random_init_model(enc, seed).to(device)
    elif which in ("vicreg", "expander"):
        model = enc.model.to(device).eval()
    else:
        raise ValueError(f"which must be vicreg, expander or random_init, got {which!r}")
    key = {
        "which": which,
        "checkpoint": file_identity(enc.checkpoint),
        "model": config_to_dict(enc.config.model),
        "seed": seed if which == "random_init" else None,
        "images": tensor_digest(rows, labels),
        "mean": list(enc.mean),
        "std": list(enc.std),
        "precision": precision,
    }

    def embed(x: Tensor) -> Tensor:
        h = model.embed(x)
        return torch.cat([h, model.expander(h)], dim=1) if which == "expander" else h

    def compute() -> Tensor:
        return extract_features(
            embed,
            rows,
            batch_size=batch_size,
            device=device,
            mean=enc.mean,
            std=enc.std,
            autocast_dtype=autocast_dtype(precision, device),
            track=track,
        )

    return cached(cache_dir, key, compute)
