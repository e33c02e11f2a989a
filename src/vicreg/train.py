"""VICReg pretraining: one code path for one process and for ``torchrun`` (DDP).

The loop is a plain function of a :class:`~vicreg.config.TrainConfig`. Under torchrun (``WORLD_SIZE > 1`` in
the environment) it joins the process group, wraps the model in DistributedDataParallel and lets the loss gather
the global batch; in one process all of that is skipped. Everything that decides a step's outcome is a function
of the step number (data order: seed and epoch; views: seed, step and rank; learning rate: the schedule), so a
run resumed from its last checkpoint continues exactly as if it had never stopped.

Gradient accumulation is deliberately not offered: VICReg's variance and covariance are batch statistics, so
accumulating the gradients of small batches is not the gradient of the large batch. Use more processes (the
loss gathers the global batch) or a smaller expander instead.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from vicreg.build import (
    BatchLoader,
    TrainingData,
    autocast_dtype,
    checkpoint_meta,
    resolve_device,
    run_data_kind,
    setup_distributed,
)
from vicreg.checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng_state,
    export_backbone,
    load_checkpoint,
    remove_partial_writes,
    restore_rng_state,
    save_checkpoint,
)
from vicreg.config import TrainConfig, config_to_dict
from vicreg.diagnostics import collapse_stats
from vicreg.loss import VICRegOutput, vicreg_loss, vicreg_multiview_loss
from vicreg.monitors import OnlineProbe
from vicreg.optim import build_optimizer, scaled_lr, set_lr, warmup_cosine
from vicreg.runlog import RunLog
from vicreg.weights import load_initial_weights

__all__ = ["NonFiniteLossError", "Objective", "TrainResult", "train"]

TERMS = ("loss", "invariance", "variance", "covariance")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the term."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict[str, float]
    interrupted: bool = False
    is_main: bool = True


# ------------------------------------------------------------------------------------------------ loop


class _StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread, signals stay as they are
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _batches(loader: BatchLoader, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    loader.set_epoch(epoch, start_batch)
    yield from loader


def _view_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device if device.type in ("cuda", "cpu") else "cpu")


Objective = Callable[[Tensor, Tensor], VICRegOutput]


def train(cfg: TrainConfig, *, objective: Objective | None = None) -> TrainResult:
    """Pretrain (or resume) the run described by ``cfg``; returns where it stands at the end.

    ``objective(z_a, z_b)`` replaces the VICReg loss of ``cfg.loss``: it returns a :class:`VICRegOutput`
    whose ``loss`` is minimised and whose three terms are logged under the usual names (for ablations, e.g. a
    SimSiam-style cosine term plus :func:`vicreg.variance_covariance_loss`). It sees the local batch; gathering
    across processes is its job.
    """
    info = setup_distributed(cfg.device)
    device = resolve_device(cfg.device, info)
    amp_dtype = autocast_dtype(cfg.precision, device)
    if cfg.batch_size % info.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} does not split evenly over {info.world_size} processes; "
            f"use a multiple of {info.world_size}"
        )
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(ckpt_dir)  # left by a process killed while saving
        remove_partial_writes(run_dir)
    torch.manual_seed(cfg.seed)

    data: TrainingData = run_data_kind(cfg).training_data(cfg, info, device)
    views = data.views
    model, spec, spec_b = data.model(cfg)
    meta = checkpoint_meta(data, spec, spec_b)
    if cfg.model.init and not (ckpt_dir / "last.pt").is_file():  # a resumed run has its own weights
        meta["init"] = load_initial_weights(
            model.backbone, cfg.model.init, backbone_name=spec.name, backbone_kwargs=spec.kwargs, download=cfg.download
        )
        if info.is_main:
            print(f"initial weights: {meta['init']}", file=sys.stderr)
    if cfg.sync_bn and info.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device)
    model.to(memory_format=memory_format)

    steps_per_epoch = len(data.loader)
    if steps_per_epoch < 1:
        raise ValueError(f"{cfg.data} gives no full batch of {cfg.batch_size} per epoch; lower --batch-size")
    schedule_steps = cfg.epochs * steps_per_epoch
    last_step = schedule_steps if cfg.max_steps is None else min(cfg.max_steps, schedule_steps)
    warmup_steps = min(schedule_steps, round(cfg.optim.warmup_epochs * steps_per_epoch))
    peak_lr = scaled_lr(cfg.optim.base_lr, cfg.batch_size)
    optimizer = build_optimizer(
        cfg.optim.name,
        model,
        lr=peak_lr,
        weight_decay=cfg.optim.weight_decay,
        momentum=cfg.optim.momentum,
        eta=cfg.optim.lars_eta,
        clip_lr=cfg.optim.lars_clip,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    probe = OnlineProbe(model.backbone, model.feature_dim, data.num_classes, device) if data.num_classes else None

    step = 0
    resume_path = ckpt_dir / "last.pt"
    if resume_path.is_file():
        step = _resume(resume_path, cfg, model, optimizer, scaler, device, probe)
    elif info.is_main:
        _write_config(run_dir, cfg)

    multi_crop = getattr(views, "local_crops", 0) > 0
    if multi_crop and objective is not None:
        raise ValueError("an objective hook sees the pair only; train without local crops (views.local_crops 0)")
    ddp_model: nn.Module = model
    if info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(ddp_model) if cfg.compile else ddp_model

    logger = RunLog(run_dir, info.is_main, cfg.progress, last_step, step)
    generator = _view_generator(device)
    window = torch.zeros(len(TERMS), device=device, dtype=torch.float64)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    bad_terms = torch.zeros(len(TERMS), device=device, dtype=torch.bool)
    window_steps, window_start = 0, time.perf_counter()
    metrics: dict[str, float] = {}
    interrupted = False
    model.train()

    def epoch_due(epoch: int) -> bool:
        return cfg.knn_every > 0 and epoch % cfg.knn_every == 0

    def checkpoint(at: int) -> None:
        _raise_if_non_finite(first_bad, bad_terms)
        if info.is_main:
            state = {
                "step": at,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": capture_rng_state(),
                "config": config_to_dict(cfg),
                "world_size": info.world_size,
                **meta,
            }
            if probe is not None:
                state["probe"] = probe.state_dict()
            save_checkpoint(state, resume_path)
        if info.world_size > 1:
            dist.barrier()

    with _StopSignal() as stop:
        try:
            epoch = step // steps_per_epoch
            batches = _batches(data.loader, epoch, step % steps_per_epoch)
            while step < last_step:
                if stop.received is not None:
                    interrupted = True
                    break
                if step // steps_per_epoch != epoch:
                    epoch = step // steps_per_epoch
                    batches = _batches(data.loader, epoch, 0)
                images, labels = next(batches)
                images = images.to(device, non_blocking=True)
                generator.manual_seed(_view_seed(cfg.seed, step, info.rank))
                local_views: list[Tensor] = []
                if multi_crop:  # the pair is the same as without local crops; the crops draw afterwards
                    (v_a, v_b), local_views = views.multi(images, generator=generator)
                else:
                    v_a, v_b = views(images, generator=generator)
                if cfg.channels_last:
                    v_a = v_a.contiguous(memory_format=torch.channels_last)
                    v_b = v_b.contiguous(memory_format=torch.channels_last)
                    local_views = [v.contiguous(memory_format=torch.channels_last) for v in local_views]
                set_lr(
                    optimizer,
                    warmup_cosine(step, schedule_steps, warmup_steps, peak_lr, cfg.optim.final_lr_ratio),
                )
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    if probe is not None:
                        probe.arm()
                    if multi_crop:  # through forward, so that DDP sees every view
                        (z_a, z_b), z_local = forward(v_a, v_b, local_views=local_views)
                    else:
                        z_a, z_b = forward(v_a, v_b)
                        z_local = []
                out = objective(z_a, z_b) if objective is not None else _vicreg_objective(cfg, [z_a, z_b], z_local)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if probe is not None:
                    probe.step(labels)

                # bookkeeping on the device: no host sync until the next log line
                terms = torch.stack([t.detach() for t in out]).double()
                bad = ~torch.isfinite(terms)
                newly = bad.any() & (first_bad < 0)
                first_bad = torch.where(newly, torch.full_like(first_bad, step), first_bad)
                bad_terms = torch.where(newly, bad, bad_terms)
                window += torch.where(bad, torch.zeros_like(terms), terms)
                window_steps += 1
                step += 1
                logger.advance()

                if step % cfg.log_every == 0 or step == last_step:
                    _raise_if_non_finite(first_bad, bad_terms)
                    elapsed = time.perf_counter() - window_start
                    values = (window / window_steps).tolist()
                    metrics = dict(zip(TERMS, values, strict=True))
                    row: dict[str, Any] = {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 4),
                        "lr": optimizer.param_groups[0]["lr"],
                        **metrics,
                        "images_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9),
                        **(probe.read() if probe is not None else {}),
                    }
                    if step % cfg.diag_every == 0 or step == last_step:
                        stats = collapse_stats(z_a.detach().float(), gamma=cfg.loss.gamma)
                        row.update({f"diag.{k}": v for k, v in stats.items()})
                    logger.log(row)
                    window.zero_()
                    window_steps, window_start = 0, time.perf_counter()
                if data.monitor is not None and step % steps_per_epoch == 0 and epoch_due(step // steps_per_epoch):
                    model.eval()
                    acc = data.monitor(model.embed, device, amp_dtype)
                    model.train()
                    logger.log({"step": step, "epoch": step // steps_per_epoch, **acc})
                    metrics.update(acc)
                if step % cfg.ckpt_every == 0 and step != last_step:
                    checkpoint(step)
            checkpoint(step)
        finally:
            logger.close()
    if info.is_main and not interrupted and step >= last_step:
        export_backbone(model.backbone.state_dict(), run_dir / "backbone.safetensors")
        if model.backbone_b is not None:
            export_backbone(model.backbone_b.state_dict(), run_dir / "backbone_b.safetensors")
    if interrupted and info.is_main:
        print(f"stopped by signal at step {step}; checkpoint saved to {resume_path}", file=sys.stderr)
    return TrainResult(run_dir, step, metrics, interrupted, info.is_main)


def _vicreg_objective(cfg: TrainConfig, z_globals: list[Tensor], z_locals: list[Tensor]) -> VICRegOutput:
    """The VICReg loss of ``cfg.loss`` on the pair, or on the pair and the local crops (multi-crop)."""
    coeffs: dict[str, Any] = {
        "sim_coeff": cfg.loss.sim_coeff,
        "std_coeff": cfg.loss.std_coeff,
        "cov_coeff": cfg.loss.cov_coeff,
        "gamma": cfg.loss.gamma,
        "eps": cfg.loss.eps,
        "gather": cfg.loss.gather,
        "check_finite": False,
    }
    if not z_locals:
        return vicreg_loss(*z_globals, **coeffs)
    return vicreg_multiview_loss(z_globals, z_locals, weighting=cfg.loss.multiview_weighting, **coeffs)


def _view_seed(seed: int, step: int, rank: int) -> int:
    """A distinct, reproducible seed for each (run seed, step, rank)."""
    return (seed * 1_000_003 + step) * 4099 + rank


def _raise_if_non_finite(first_bad: Tensor, bad_terms: Tensor) -> None:
    bad_step = int(first_bad)
    if bad_step >= 0:
        names = [name for name, bad in zip(TERMS, bad_terms.tolist(), strict=True) if bad]
        raise NonFiniteLossError(
            f"the loss became non-finite at step {bad_step} (terms: {', '.join(names)}); the run stopped and its "
            "last good checkpoint is kept. Lower the learning rate, use fp32/bf16 instead of fp16, or check the "
            "data for NaN/inf values"
        )


def _write_config(run_dir: Path, cfg: TrainConfig) -> None:
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write(run_dir / "config.yaml", lambda f: f.write(text.encode()))


# Settings a checkpoint's state depends on: the weights' shapes, the optimiser's state, the step -> data map.
_RESUME_MUST_MATCH = ("model", "optim.name", "batch_size")


def _resume(
    path: Path,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    probe: OnlineProbe | None = None,
) -> int:
    state = load_checkpoint(path, map_location=device)
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no run config; it was not written by `vicreg train`")
    mine = config_to_dict(cfg)
    for key in _RESUME_MUST_MATCH:  # the rest (epochs, max_steps, logging, device...) may change on resume
        section, _, name = key.partition(".")
        theirs = saved.get(section)
        if name:
            theirs = theirs.get(name) if isinstance(theirs, dict) else None
        ours = mine[section] if not name else mine[section][name]
        if theirs != ours:
            raise CheckpointError(
                f"{path} was written by a run with a different {key} config ({theirs}) than "
                f"this one ({ours}); use another --out folder or the same settings"
            )
    try:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if probe is not None and "probe" in state:
            probe.load_state_dict(state["probe"])
        restore_rng_state(state["rng"])
        step = state["step"]
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{path} does not match this model: {type(err).__name__}: {err}") from err
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{path} holds an invalid step {step!r}")
    return step
