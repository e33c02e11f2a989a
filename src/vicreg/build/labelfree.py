"""Label-free measures of an encoder on a fixed, seeded sample of held-out rows, for eval, training and tune.

:func:`label_free_sample` reads the rows (:func:`~vicreg.build.splits.held_out_rows`) and the views of LiDAR's
surrogate classes (the data kind's :meth:`~vicreg.build.kinds.DataKind.label_free_views`, from a run's config);
:func:`measure_label_free` scores a model on them (:func:`vicreg.probes.label_free.label_free_scores`), with the
random-init comparison when given that model. :class:`LabelFreeMonitor` is training's cheap periodic version:
the random-init scores are measured once and reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vicreg.build.encoders import model_from_specs
from vicreg.build.kinds import DataKind, LabelFreeViews
from vicreg.build.splits import held_out_rows
from vicreg.config import TrainConfig
from vicreg.models import EncoderSpec
from vicreg.probes.features import normalize_rows
from vicreg.probes.label_free import label_free_scores, moved_from_init

__all__ = ["LabelFreeMonitor", "LabelFreeSample", "label_free_monitor", "label_free_sample", "measure_label_free"]

MEASURES = ("rankme", "lidar", "alpha_req")


@dataclass(frozen=True)
class LabelFreeSample:
    """Held-out rows (as the data holds them, on the CPU), their normalisation and the training views."""

    rows: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    views: LabelFreeViews
    note: str
    """Where the rows come from, in words."""


def label_free_sample(
    kind: DataKind,
    cfg: TrainConfig,
    spec: EncoderSpec,
    source: str,
    *,
    rows: int = 2000,
    seed: int = 0,
    download: bool = False,
) -> LabelFreeSample:
    """The fixed sample of ``source`` for encoder ``spec``; LiDAR's views are those of the run config ``cfg``."""
    split, note = held_out_rows(kind, spec, source, rows=rows, seed=seed, download=download)
    views = kind.label_free_views(cfg, spec, split.data)
    return LabelFreeSample(split.data.rows.cpu(), spec.mean, spec.std, views, note)


def _encoder(model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None) -> Callable[[Tensor], Tensor]:
    def encode(x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return model.embed(x.to(device)).float()  # type: ignore[operator]

    return encode


@torch.no_grad()
def measure_label_free(
    sample: LabelFreeSample,
    model: nn.Module,
    device: torch.device,
    *,
    init_model: nn.Module | None = None,
    seed: int = 0,
    copies: int = 8,
    lidar_rows: int | None = 1000,
    batch_size: int = 512,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """:func:`~vicreg.probes.label_free.label_free_scores` of ``model`` (its ``embed``, in eval mode; its mode is
    restored after) on ``sample``, views drawn from a generator seeded with ``seed``."""
    models = [m for m in (model, init_model) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    generator = torch.Generator(device=device if device.type in ("cuda", "cpu") else "cpu").manual_seed(seed)
    try:
        return label_free_scores(
            _encoder(model, device, amp_dtype),
            sample.rows,
            lambda x, g: sample.views(x.to(device), g),
            generator,
            prepare=lambda x: normalize_rows(x, sample.mean, sample.std, device),
            copies=copies,
            lidar_rows=lidar_rows,
            batch_size=batch_size,
            init_encode=None if init_model is None else _encoder(init_model, device, amp_dtype),
        )
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


@dataclass
class LabelFreeMonitor:
    """Training's periodic label-free measures: RankMe, alpha-ReQ and LiDAR (few copies) of the model on the held-out
    sample, and each relative to the random-init model's (measured once, at the first call)."""

    sample: LabelFreeSample
    device: torch.device
    init_model: nn.Module | None
    seed: int = 0
    copies: int = 4
    lidar_rows: int = 250
    amp_dtype: torch.dtype | None = None
    init_scores: dict[str, float] = field(default_factory=dict)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        kw: dict[str, Any] = {"seed": self.seed, "copies": self.copies, "lidar_rows": self.lidar_rows}
        kw["amp_dtype"] = self.amp_dtype
        if self.init_model is not None:  # once: a random-init encoder's scores do not change
            init = self.init_model.to(self.device)
            got = measure_label_free(self.sample, init, self.device, **kw)
            self.init_scores = {k: got[k] for k in MEASURES}
            self.init_model = None
        scores = measure_label_free(self.sample, model, self.device, **kw)
        out = {k: scores[k] for k in MEASURES}
        out.update(moved_from_init(out, self.init_scores))
        return out


def label_free_monitor(
    kind: DataKind,
    cfg: TrainConfig,
    specs: tuple[EncoderSpec, EncoderSpec | None],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    views: TrainConfig | None = None,
) -> LabelFreeMonitor:
    """The monitor of a training run: ``cfg.label_free_rows`` held-out rows of its data (seeded by ``cfg.seed``),
    the views of ``views`` (default ``cfg``), and its architecture freshly initialised from ``cfg.seed`` (without
    touching the global RNG)."""
    sample = label_free_sample(
        kind, views or cfg, specs[0], cfg.data, rows=cfg.label_free_rows, seed=cfg.seed, download=cfg.download
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        init = model_from_specs(cfg.model, specs[0], specs[1])
    return LabelFreeMonitor(sample, device, init, seed=cfg.seed, amp_dtype=amp_dtype)
