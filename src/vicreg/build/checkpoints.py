"""Checkpoints: what a checkpoint stores to rebuild its model without the training data
(:func:`checkpoint_meta`), and :func:`load_encoder`, which rebuilds the model strictly from a run folder or a
checkpoint file (older checkpoints without encoder descriptions through :func:`_legacy_specs`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vicreg.build.encoders import Input, encoder_spec, model_from_specs
from vicreg.build.kinds import DataKind, PairKind, TrainingData, data_kind, run_data_kind
from vicreg.checkpoint import CheckpointError, load_checkpoint, newest_good_checkpoint
from vicreg.config import TrainConfig, config_from_dict
from vicreg.data.bands import BandStats, to_display
from vicreg.distributed import DistInfo
from vicreg.models import EncoderSpec, VICReg

__all__ = [
    "LoadedEncoder",
    "checkpoint_meta",
    "find_checkpoint",
    "load_encoder",
    "random_init_model",
    "run_dir_of",
]


def checkpoint_meta(data: TrainingData, spec: EncoderSpec, spec_b: EncoderSpec | None) -> dict[str, Any]:
    """What a checkpoint stores, beside the weights and the config, to rebuild and feed the model without
    reading the training data again: the data kind and each encoder's :class:`EncoderSpec`."""
    kind: dict[str, Any] = {"name": data.kind.name, **data.meta}
    if isinstance(data.kind, PairKind):
        kind.update(modality_a=data.kind.modality_a, modality_b=data.kind.modality_b)
    return {
        "data_kind": kind,
        "encoder": spec.to_dict(),
        "encoder_b": None if spec_b is None else spec_b.to_dict(),
    }


@dataclass(frozen=True)
class LoadedEncoder:
    """A trained model in eval mode with what is needed to feed it the way training did."""

    model: VICReg
    config: TrainConfig
    checkpoint: Path
    step: int
    spec: EncoderSpec
    """Branch A's encoder: architecture, input shape and normalisation."""
    spec_b: EncoderSpec | None
    data_kind: Mapping[str, Any]

    @property
    def channels(self) -> int:
        return self.spec.in_channels

    @property
    def mean(self) -> tuple[float, ...]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.spec.std

    @property
    def image_size(self) -> int:
        """The side of the training views (images); 0 for other kinds."""
        return self.spec.input_shape[-1] if self.spec.kind == "image" and len(self.spec.input_shape) == 3 else 0

    def kind_for(
        self,
        source: str | None,
        *,
        data_column: str = "",
        label_column: str = "",
        root: str | os.PathLike[str] | None = None,
    ) -> DataKind:
        """The data kind that reads ``source`` (``None``: the run's own training data) for this encoder: the run's
        own kind for its own data, else the kind of the encoder's input (e.g. an image dataset for the image
        branch of a pair run). Hugging Face column names default to the training run's for its own data."""
        own = source is None or str(source) == str(self.config.data)
        if self.data_kind.get("name") == "pair" and own:
            stored = self.data_kind
            return PairKind(str(stored.get("modality_a", self.spec.kind)), str(stored.get("modality_b", "")))
        if self.spec.kind != "image":
            return data_kind(self.spec.kind)
        return data_kind(
            "image",
            data_column=data_column or (self.config.data_column if own else ""),
            label_column=label_column or (self.config.label_column if own else ""),
            root=root,
            window=self.config.window,  # the encoder learned windowed values: any DICOM data gets its window
        )

    @property
    def band_stats(self) -> BandStats | None:
        """Multi-band runs: the training data's per-band statistics (their ``low``/``high`` stretch pictures)."""
        stored = self.data_kind.get("band_stats")
        return BandStats.from_dict(stored) if isinstance(stored, Mapping) else None

    def pictures(self, rows: Tensor, bands: Sequence[int] = ()) -> Tensor:
        """``uint8`` grey or RGB pictures ``(..., 1 or 3, H, W)`` of image rows ``(..., C, H, W)`` for figures:
        8-bit grey/RGB rows as they are; other rows through :func:`vicreg.data.bands.to_display` (``bands``: one
        or three band indices, default the first three), each band stretched over the training data's
        ``low``/``high`` percentiles when the run stored them."""
        if not bands and rows.dtype == torch.uint8 and rows.shape[-3] in (1, 3):
            return rows
        stats = self.band_stats
        flat = rows.reshape(-1, *rows.shape[-3:])
        low, high = (None, None) if stats is None else (stats.low, stats.high)
        shown = to_display(flat, bands, low, high)
        return shown.reshape(*rows.shape[:-3], *shown.shape[1:])

    def branch(self, name: str = "a") -> tuple[nn.Module, EncoderSpec]:
        """The backbone of branch ``name`` (``a``, or ``b`` of a two-encoder run) and its description."""
        if name == "a":
            return self.model.backbone, self.spec
        if name != "b":
            raise ValueError(f"branch must be a or b, got {name!r}")
        if self.model.backbone_b is None or self.spec_b is None:
            raise ValueError(f"{self.checkpoint} has one shared encoder; drop --branch b")
        return self.model.backbone_b, self.spec_b

    def summary(self) -> dict[str, Any]:
        """What a model card says about the run: data, steps, architecture, and eval.json's numbers if any."""
        cfg = self.config
        summary: dict[str, Any] = {"data": cfg.data, "steps": self.step, "backbone": self.spec.name}
        summary.update(expander=cfg.model.expander, batch_size=cfg.batch_size)
        eval_json = run_dir_of(self.checkpoint) / "eval.json"
        if eval_json.is_file():
            results = json.loads(eval_json.read_text()).get("results", {}).get("vicreg", {})
            knn = {k: v.get("top1") for k, v in results.get("knn", {}).items()}
            summary["eval"] = {"knn_top1": knn, "linear_top1": results.get("linear", {}).get("last_top1")}
        return summary


def find_checkpoint(run_or_checkpoint: str | os.PathLike[str]) -> Path:
    """The newest intact checkpoint of a run folder (``RUN/checkpoints/last.pt`` unless it is damaged), the
    path itself for a file."""
    path = Path(run_or_checkpoint).expanduser()
    if path.is_dir():
        ckpt = newest_good_checkpoint(path / "checkpoints")
        if ckpt is None:
            raise CheckpointError(
                f"{path} is a folder without checkpoints/last.pt; pass a run folder of vicreg train or a .pt file"
            )
        return ckpt
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder (vicreg train --out) or a checkpoint file")
    return path


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/x.pt`` -> ``RUN``; otherwise its folder)."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _config_of(state: Mapping[str, Any], path: Path) -> TrainConfig:
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise CheckpointError(f"{path} holds no training config or model weights; was it written by vicreg train?")
    try:
        return config_from_dict(state["config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: its config cannot be read by this version of vicreg: {err}") from err


def _legacy_specs(
    state: Mapping[str, Any], cfg: TrainConfig, path: Path
) -> tuple[EncoderSpec, EncoderSpec | None, dict[str, Any]]:
    """The encoder specs of a checkpoint written before checkpoints carried them (vicreg 0.1.0 before the build
    layer): the input width is read from the first weight of each backbone, the normalisation from its
    ``normalize`` entry, or, when absent, from the training data as the run computed it."""
    weights = state["model"]

    def width_of(prefix: str, kind: str) -> int:
        ndim = {"image": 4, "signal": 3, "table": 2}[kind]
        for key, value in weights.items():
            if key.startswith(prefix) and value.ndim == ndim:
                return int(value.shape[1])
        raise CheckpointError(f"{path}: cannot tell the input width of {prefix.rstrip('.')} for {kind} data")

    kind = {"name": "pair", "modality_a": cfg.modality, "modality_b": cfg.modality_b} if cfg.modality_b else {}
    saved = state.get("normalize")
    specs = []
    for branch, modality, prefix in (("a", cfg.modality, "backbone."), ("b", cfg.modality_b, "backbone_b.")):
        name = cfg.model.backbone if branch == "a" else cfg.model.backbone_b
        if branch == "b" and not name:
            break
        channels = width_of(prefix, modality)
        shape = (channels, cfg.views.size, cfg.views.size) if modality == "image" else (channels,)
        if branch == "a" and isinstance(saved, dict) and "mean" in saved:
            mean = tuple(float(v) for v in saved["mean"])
            std = tuple(float(v) for v in saved["std"])
        else:
            mean, std = _derive_stats(cfg, branch)
        specs.append(encoder_spec(name, cfg.model, Input(modality, shape, mean, std), branch))
    kind = kind or {"name": cfg.modality}
    return specs[0], specs[1] if len(specs) > 1 else None, kind


def _derive_stats(cfg: TrainConfig, branch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        data = run_data_kind(cfg).training_data(cfg, DistInfo(), torch.device("cpu"))
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(
            f"this checkpoint does not store its normalisation and its training data {cfg.data!r} cannot be read to "
            f"compute it again ({err}); make the training data available (in its data_root or in $VICREG_DATA)"
        ) from err
    inp = data.inputs[0 if branch == "a" else 1]
    return inp.mean, inp.std


def _specs_of(state: Mapping[str, Any], cfg: TrainConfig, path: Path) -> tuple[EncoderSpec, EncoderSpec | None, Any]:
    if "encoder" not in state:
        return _legacy_specs(state, cfg, path)
    try:
        spec = EncoderSpec.from_dict(state["encoder"])
        spec_b = None if state.get("encoder_b") is None else EncoderSpec.from_dict(state["encoder_b"])
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return spec, spec_b, dict(state.get("data_kind") or {"name": spec.kind})


def load_encoder(run_or_checkpoint: str | os.PathLike[str], device: torch.device | str = "cpu") -> LoadedEncoder:
    """The trained model of a run folder or checkpoint, on ``device``, in eval mode (loaded with strict=True),
    rebuilt from what the checkpoint stores: no training data is read and no shape is guessed."""
    path = find_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path)
    cfg = _config_of(state, path)
    spec, spec_b, kind = _specs_of(state, cfg, path)
    model = model_from_specs(cfg.model, spec, spec_b)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes: {err}") from err
    model.to(device).eval()
    return LoadedEncoder(model, cfg, path, int(state.get("step", -1)), spec, spec_b, kind)


def random_init_model(enc: LoadedEncoder, seed: int = 0) -> VICReg:
    """The same architecture freshly initialised from ``seed`` (a baseline), without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_from_specs(enc.config.model, enc.spec, enc.spec_b)
    return model.eval()
