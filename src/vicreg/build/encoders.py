"""Encoders: a config and the input each branch sees become :class:`~vicreg.models.EncoderSpec` descriptions, and
descriptions become a model. :func:`model_from_specs` is the one path from descriptions to a
:class:`~vicreg.models.VICReg`: training, loading a checkpoint and the random-init baseline all take it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vicreg.config import ModelConfig, TrainConfig
from vicreg.models import EncoderSpec, VICReg, build_backbone, feature_dim_of

__all__ = ["Input", "encoder_spec", "encoder_specs", "model_from_config", "model_from_specs"]


@dataclass(frozen=True)
class Input:
    """What one branch's encoder sees: the data kind, one sample's shape and its normalisation."""

    kind: str
    shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def encoder_spec(name: str, model: ModelConfig, inp: Input, branch: str = "a") -> EncoderSpec:
    """The description of backbone ``name`` for input ``inp`` with the config's width (and depth) options; its
    feature size is read from a copy built on the meta device (no memory, no random numbers drawn)."""
    kwargs: dict[str, Any] = {"small_images": model.small_images, "in_channels": inp.shape[0]}
    width = model.width_b or model.width if branch == "b" else model.width
    if name in ("small_cnn", "resnet1d", "mlp"):
        kwargs["width"] = width
    if name == "mlp":
        kwargs["depth"] = model.depth
    with torch.device("meta"):
        dim = feature_dim_of(name, build_backbone(name, **kwargs))
    if dim is None:
        raise ValueError(f"cannot tell the feature size of backbone {name!r}; use a backbone that reports it")
    return EncoderSpec(name, kwargs, dim, inp.kind, inp.shape, inp.mean, inp.std)


def encoder_specs(cfg: TrainConfig, inputs: tuple[Input, Input]) -> tuple[EncoderSpec, EncoderSpec | None]:
    """The description of branch A's encoder and, for a run with ``model.backbone_b``, of branch B's."""
    spec = encoder_spec(cfg.model.backbone, cfg.model, inputs[0])
    if not cfg.model.backbone_b:
        return spec, None
    return spec, encoder_spec(cfg.model.backbone_b, cfg.model, inputs[1], "b")


def model_from_specs(model: ModelConfig, spec: EncoderSpec, spec_b: EncoderSpec | None = None) -> VICReg:
    """A freshly initialised VICReg model: the backbone(s) ``spec`` (and ``spec_b``) describe, in that order, then
    ``model``'s expander(s)."""
    backbone = spec.build()
    extra: dict[str, Any] = {}
    if spec_b is not None:
        extra["backbone_b"], extra["feature_dim_b"] = spec_b.build(), spec_b.feature_dim
    if model.expander_b:
        extra["expander_b"] = model.expander_b
    return VICReg(backbone, model.expander, feature_dim=spec.feature_dim, **extra)


def model_from_config(cfg: TrainConfig, in_channels: int, input_shape: tuple[int, ...] | None = None) -> VICReg:
    """A freshly initialised model of ``cfg`` for one modality's input of ``in_channels`` (for benchmarks and FLOP
    counts; training describes its input from its data: :meth:`vicreg.build.TrainingData.model`)."""
    shape = input_shape or (in_channels, cfg.views.size, cfg.views.size)
    inp = Input(cfg.modality, shape, (0.0,), (1.0,))
    return model_from_specs(cfg.model, *encoder_specs(cfg, (inp, inp)))
