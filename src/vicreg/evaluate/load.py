"""Rebuild a trained VICReg model from a run folder or a checkpoint, strictly.

A checkpoint (``checkpoints/last.pt``) holds the run's ``config`` and the model's ``state_dict``; the model is
rebuilt with :func:`vicreg.train.build_model` and loaded with ``strict=True``, so a checkpoint that does not
match its own config fails loudly instead of evaluating a half-initialised network.

Features are computed exactly as training normalised its views: the per-channel ``mean``/``std`` stored in
the checkpoint (``normalize``), or, for checkpoints written before that key existed, the statistics the
training run derives again from its own training data (``vicreg.train.build_data`` + ``build_views``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vicreg.checkpoint import CheckpointError, load_checkpoint
from vicreg.config import TrainConfig, config_from_dict
from vicreg.models import VICReg

__all__ = [
    "LoadedEncoder",
    "check_backbone_loads",
    "find_checkpoint",
    "load_encoder",
    "random_init_model",
    "run_dir_of",
]


@dataclass(frozen=True)
class LoadedEncoder:
    """A trained model in eval mode with what is needed to feed it images the way training did."""

    model: VICReg
    config: TrainConfig
    checkpoint: Path
    step: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_size(self) -> int:
        """The side of the training views; evaluation images are brought to this size."""
        return self.config.views.size


def find_checkpoint(run_or_checkpoint: str | os.PathLike[str]) -> Path:
    """``RUN/checkpoints/last.pt`` for a run folder, the path itself for a file."""
    path = Path(run_or_checkpoint).expanduser()
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise CheckpointError(f"{path} is a folder without checkpoints/last.pt; pass a run folder or a .pt file")
        return ckpt
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder (vicreg train --out) or a checkpoint file")
    return path


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/x.pt`` -> ``RUN``; otherwise its folder)."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _config_of(state: dict[str, Any], path: Path) -> TrainConfig:
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise CheckpointError(f"{path} holds no training config or model weights; was it written by vicreg train?")
    try:
        return config_from_dict(state["config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: its config cannot be read by this version of vicreg: {err}") from err


def _channels_of(state_dict: dict[str, torch.Tensor], path: Path) -> int:
    """Input channels from the first 4-D weight of the backbone (the stem convolution)."""
    for key, value in state_dict.items():
        if key.startswith("backbone.") and value.ndim == 4:
            return int(value.shape[1])
    raise CheckpointError(f"{path}: cannot tell the input channels (no convolution weight in the backbone)")


def _normalisation(state: dict[str, Any], cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    saved = state.get("normalize")
    if isinstance(saved, dict) and "mean" in saved and "std" in saved:
        return tuple(float(v) for v in saved["mean"]), tuple(float(v) for v in saved["std"])
    # Older checkpoints: derive the statistics again exactly as the training run did.
    from vicreg.distributed import DistInfo
    from vicreg.train import build_data, build_views

    try:
        data = build_data(cfg, DistInfo(), torch.device("cpu"))
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(
            f"this checkpoint does not store its normalisation statistics and its training data {cfg.data!r} "
            f"cannot be read to compute them again ({err}); make the training data available (--data-root)"
        ) from err
    views = build_views(cfg, data)
    return tuple(views.mean), tuple(views.std)


def load_encoder(run_or_checkpoint: str | os.PathLike[str], device: torch.device | str = "cpu") -> LoadedEncoder:
    """The trained model of a run folder or checkpoint, on ``device``, in eval mode (loaded with strict=True)."""
    path = find_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path)
    cfg = _config_of(state, path)
    channels = _channels_of(state["model"], path)
    from vicreg.train import build_model

    model = build_model(cfg, channels)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes: {err}") from err
    mean, std = _normalisation(state, cfg)
    model.to(device).eval()
    return LoadedEncoder(model, cfg, path, int(state.get("step", -1)), channels, mean, std)


def random_init_model(cfg: TrainConfig, channels: int, seed: int = 0) -> VICReg:
    """The same architecture freshly initialised from ``seed`` (a baseline), without touching the global RNG."""
    from vicreg.train import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg, channels)
    return model.eval()


def check_backbone_loads(path: str | os.PathLike[str], config: dict[str, Any]) -> str:
    """Load an exported backbone file with ``strict=True`` into a fresh backbone of ``config``'s architecture.

    For ResNets that is torchvision's ``resnetXX`` with ``fc = nn.Identity()`` (and the 3x3 stem without
    max-pool when trained with ``small_images``), exactly as :func:`vicreg.models.build_backbone` makes it.
    Returns a description of the model it loaded into; raises :class:`CheckpointError` when it does not load.
    """
    from vicreg.checkpoint import load_backbone
    from vicreg.models import build_backbone

    state = load_backbone(path)
    model_cfg = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or "backbone" not in model_cfg:
        raise CheckpointError(f"no model config to check {path} against (the checkpoint's 'config' lacks 'model')")
    name = str(model_cfg["backbone"])
    small = bool(model_cfg.get("small_images", True))
    channels = next((int(v.shape[1]) for v in state.values() if v.ndim == 4), 3)
    kwargs: dict[str, Any] = {"width": int(model_cfg.get("width", 32))} if name == "small_cnn" else {}
    module = build_backbone(name, small_images=small and name.startswith("resnet"), in_channels=channels, **kwargs)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not load strictly into {name}: {err}") from err
    if name.startswith("resnet"):
        stem = "3x3 stem, no max-pool" if small else "standard stem"
        return f"torchvision.models.{name}() with fc = Identity, {stem}, {channels} input channels"
    return f"{name} ({type(module).__name__}, {channels} input channels)"
