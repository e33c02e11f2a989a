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
from collections.abc import Callable, Iterator, Mapping
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
    capture_rng_state,
    checkpoint_candidates,
    load_checkpoint,
    no_readable_checkpoint,
    restore_rng_state,
    save_keeping,
    write_backbone,
)
from vicreg.config import TrainConfig, config_to_dict
from vicreg.diagnostics import collapse_stats
from vicreg.files import atomic_write, remove_partial_writes
from vicreg.loss import VICRegOutput, vicreg_loss, vicreg_multiview_loss
from vicreg.models import EncoderSpec
from vicreg.monitors import OnlineProbe
from vicreg.optim import build_optimizer, scaled_lr, set_lr, warmup_cosine
from vicreg.runlog import RunLog
from vicreg.weights import load_initial_weights

__all__ = [
    "ONLINE_PROTOCOL",
    "NonFiniteLossError",
    "Objective",
    "Schedule",
    "TrainResult",
    "budget_total",
    "plan_schedule",
    "run_header",
    "train",
]

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

# Time budgets (--budget-minutes): the first WARM_STEPS steps of a process are not timed (allocations, first
# calls); then at least MEASURED_STEPS steps and min(MEASURE_MAX_S, MEASURE_FRACTION of the budget) seconds are.
WARM_STEPS = 2
MEASURED_STEPS = 5
MEASURE_MAX_S = 30.0
MEASURE_FRACTION = 0.05
BUDGET_MARGIN = 0.03
"""The budgeted run is planned to end this fraction of the budget early (step rates drift on shared machines)."""


@dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule's length: ``total`` steps (``None`` while a time budget is being measured),
    ``warmup`` of them linear from 0, then a cosine to the end; ``budget_minutes`` when a budget decided it."""

    total: int | None
    warmup: int
    budget_minutes: float | None = None

    def lr(self, step: int, peak: float, final_ratio: float) -> float:
        """The rate at ``step``. While the total is unknown, the warm-up (whose length does not depend on the
        total) or the peak: the steps taken while measuring follow the schedule that is decided after them."""
        if self.total is None:
            return peak * step / self.warmup if step < self.warmup else peak
        return warmup_cosine(step, self.total, min(self.warmup, self.total), peak, final_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "warmup": self.warmup, "budget_minutes": self.budget_minutes}


def plan_schedule(cfg: TrainConfig, steps_per_epoch: int, stored: Mapping[str, Any] | None, resumed: bool) -> Schedule:
    """The schedule of a run: the one a budgeted checkpoint stores (never re-measured), else ``--epochs``
    long, else (``--budget-minutes``) to be measured. ``stored``: the checkpoint's ``schedule`` entry."""
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    if stored is not None and stored.get("budget_minutes") is not None:
        total = stored.get("total")
        if total is not None:
            return Schedule(int(total), int(stored["warmup"]), float(stored["budget_minutes"]))
        return Schedule(None, warmup, cfg.budget_minutes or float(stored["budget_minutes"]))
    if cfg.budget_minutes is not None:
        if resumed:
            raise ValueError(
                f"{cfg.out} holds a run started without --budget-minutes; resume it without --budget-minutes "
                "(its schedule spans --epochs), or start the budgeted run in another --out folder"
            )
        return Schedule(None, warmup, cfg.budget_minutes)
    total = cfg.epochs * steps_per_epoch
    return Schedule(total, min(total, warmup), None)


def budget_total(
    step: int,
    seconds: float,
    step_s: float,
    *,
    steps_per_epoch: int,
    knn_every: int,
    monitor_s: float,
    ckpt_every: int,
    ckpt_s: float,
) -> int:
    """The largest total ``T >= step`` such that the steps ``step+1 .. T`` (``step_s`` each), the kNN monitors
    of the epochs ending in them (``monitor_s`` each, every ``knn_every`` epochs; 0: none), the checkpoints
    every ``ckpt_every`` steps before ``T``, the final one and the backbone export (``ckpt_s`` each) take at
    most ``seconds``. ``step`` itself when not even one step fits."""
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    every = steps_per_epoch * knn_every

    def cost(total: int) -> float:
        monitors = total // every - step // every if knn_every > 0 else 0
        saves = (total - 1) // ckpt_every - step // ckpt_every + 2  # periodic, the final one, the export
        return (total - step) * step_s + monitors * monitor_s + max(saves, 1) * ckpt_s

    lo, hi = step, step + int(seconds / step_s) + 1  # cost(hi) > seconds: the steps alone exceed it
    if cost(lo + 1) > seconds:
        return step
    lo += 1
    while hi - lo > 1:  # cost grows with the total: the last total that fits
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return lo


@dataclass
class _Clock:
    """Times the steps of a budgeted run until it can decide the total, less the monitors and checkpoints
    inside the timed window (which are timed on their own)."""

    started: float
    minutes: float
    first_step: int
    window_start: float | None = None
    extra_s: float = 0.0
    monitor_s: float | None = None
    ckpt_s: float | None = None

    def begin(self, step: int) -> None:
        if step == self.first_step + WARM_STEPS:
            self.window_start, self.extra_s = time.monotonic(), 0.0

    def step_s(self, step: int) -> float | None:
        """Seconds per step once enough steps were timed, else ``None``."""
        if self.window_start is None:
            return None
        n = step - self.first_step - WARM_STEPS
        spent = time.monotonic() - self.window_start - self.extra_s
        if n < MEASURED_STEPS or spent < min(MEASURE_MAX_S, MEASURE_FRACTION * 60 * self.minutes):
            return None
        return spent / n

    def left_s(self) -> float:
        """Seconds left before the budget's planned end (the margin already taken off)."""
        return self.started + 60 * self.minutes * (1 - BUDGET_MARGIN) - time.monotonic()


def train(cfg: TrainConfig, *, objective: Objective | None = None) -> TrainResult:
    """Pretrain (or resume) the run described by ``cfg``; returns where it stands at the end.

    ``objective(z_a, z_b)`` replaces the VICReg loss of ``cfg.loss``: it returns a :class:`VICRegOutput`
    whose ``loss`` is minimised and whose three terms are logged under the usual names (for ablations, e.g. a
    SimSiam-style cosine term plus :func:`vicreg.variance_covariance_loss`). It sees the local batch; gathering
    across processes is its job.

    With ``cfg.budget_minutes`` the total number of steps is decided after the first steps (see
    :func:`budget_total`): from the measured step rate, one timed kNN monitor call and one timed checkpoint,
    so that the whole call ends within the budget; the warm-up keeps its length in steps
    (``optim.warmup_epochs``, at most half the total), so the steps taken while measuring were already on the
    final schedule. The decided total is stored in every checkpoint and a resumed run keeps it.
    """
    started = time.monotonic()
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
    if cfg.sync_bn and info.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device)
    model.to(memory_format=memory_format)

    steps_per_epoch = len(data.loader)
    if steps_per_epoch < 1:
        raise ValueError(f"{cfg.data} gives no full batch of {cfg.batch_size} per epoch; lower --batch-size")
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
    say: Callable[[str], None] = (lambda text: print(text, file=sys.stderr, flush=True)) if info.is_main else _quiet
    found = _newest_readable(ckpt_dir, device, say)
    previous_step: int | None = None  # the step of the intact checkpoint at last.pt, kept by the next save
    if found is not None:
        step = _resume(found[0], found[1], cfg, model, optimizer, scaler, probe)
        previous_step = step if found[0].name == "last.pt" else None
    elif info.is_main:
        _write_config(run_dir, cfg)
    schedule = plan_schedule(cfg, steps_per_epoch, found[1].get("schedule") if found else None, found is not None)
    clock = None
    if schedule.total is None:
        clock = _Clock(started, schedule.budget_minutes or 0.0, step)
        if cfg.max_steps is not None and cfg.max_steps <= step + WARM_STEPS + MEASURED_STEPS:
            schedule, clock = (
                Schedule(cfg.max_steps, min(schedule.warmup, cfg.max_steps // 2), schedule.budget_minutes),
                None,
            )
    last_step = _last_step(cfg, schedule, step)

    multi_crop = getattr(views, "local_crops", 0) > 0
    if multi_crop and objective is not None:
        raise ValueError("an objective hook sees the pair only; train without local crops (views.local_crops 0)")
    ddp_model: nn.Module = model
    if info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(ddp_model) if cfg.compile else ddp_model

    logger = RunLog(run_dir, info.is_main, cfg.progress, schedule.total or 0, step)
    for line in run_header(cfg, info.world_size, device, data, model, (spec, spec_b), steps_per_epoch, schedule):
        logger.message(line)
    if "init" in meta:
        logger.message(f"  init        {meta['init']}")
    elif cfg.model.init:
        logger.message(f"  init        {cfg.model.init} applied when the run started (not again on resume)")
    if found is None:
        logger.message("starting a new run")
    else:
        logger.message(
            f"resuming from {found[0]} at step {step} of {schedule.total or '?'} (epoch {step / steps_per_epoch:.2f})"
        )
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

    def checkpoint(at: int) -> float:
        """Save (rank 0) and wait for every rank; returns the seconds it took."""
        nonlocal previous_step
        began = time.monotonic()
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
                "schedule": schedule.to_dict(),
                **meta,
            }
            if probe is not None:
                state["probe"] = probe.state_dict()
            save_keeping(state, ckpt_dir, keep=cfg.keep_checkpoints, previous_step=previous_step)
            previous_step = at
        if info.world_size > 1:
            dist.barrier()
        return time.monotonic() - began

    def run_monitor(at: int) -> float:
        """The online kNN monitor: logged (its protocol named) and printed; returns the seconds it took."""
        assert data.monitor is not None
        began = time.monotonic()
        model.eval()
        acc = data.monitor(model.embed, device, amp_dtype)
        model.train()
        online = {f"online_{key}": value for key, value in acc.items()}
        logger.log(
            {"step": at, "epoch": round(at / steps_per_epoch, 4), **online, ONLINE_PROTOCOL: data.monitor.protocol}
        )
        logger.message(f"step {at}: {_knn_words(online)} -- {data.monitor.protocol}")
        metrics.update(online)
        return time.monotonic() - began

    def decide_budget(at: int, step_s: float) -> None:
        """Fix the total of a budgeted run (see :func:`budget_total`) and save it in a checkpoint."""
        nonlocal schedule, last_step, clock
        assert clock is not None
        timing = {"steps_per_epoch": steps_per_epoch, "knn_every": cfg.knn_every if data.monitor else 0}
        timing |= {"ckpt_every": cfg.ckpt_every}
        guess = budget_total(at, clock.left_s(), step_s, **timing, monitor_s=0.0, ckpt_s=0.0)
        if cfg.max_steps is not None:
            guess = min(guess, cfg.max_steps)
        if clock.monitor_s is None and data.monitor is not None and cfg.knn_every > 0:
            every = steps_per_epoch * cfg.knn_every
            if guess // every > at // every:  # a monitor will run: time one now
                clock.monitor_s = run_monitor(at)
        if clock.ckpt_s is None:
            schedule = Schedule(guess, min(schedule.warmup, guess // 2), schedule.budget_minutes)
            clock.ckpt_s = checkpoint(at)
        total = budget_total(
            at, clock.left_s(), step_s, **timing, monitor_s=clock.monitor_s or 0.0, ckpt_s=clock.ckpt_s
        )
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        if info.world_size > 1:  # every rank takes rank 0's decision
            decided = torch.tensor([total], device=_collective(device))
            dist.broadcast(decided, 0)
            total = int(decided.item())
        schedule = Schedule(total, min(schedule.warmup, total // 2), schedule.budget_minutes)
        last_step, clock = total, None
        checkpoint(at)
        logger.set_total(total)
        logger.message(budget_words(schedule, at, steps_per_epoch, step_s, time.monotonic() - started))

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
                set_lr(optimizer, schedule.lr(step, peak_lr, cfg.optim.final_lr_ratio))
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
                    spent = run_monitor(step)
                    if clock is not None:
                        clock.monitor_s, clock.extra_s = spent, clock.extra_s + spent
                if step % cfg.ckpt_every == 0 and step != last_step:
                    spent = checkpoint(step)
                    if clock is not None:
                        clock.ckpt_s, clock.extra_s = spent, clock.extra_s + spent
                if clock is not None:
                    clock.begin(step)
                    step_s = clock.step_s(step)
                    if info.world_size > 1:  # decide at the same step on every rank: rank 0's timing
                        ready = torch.tensor([step_s or 0.0], dtype=torch.float64, device=_collective(device))
                        dist.broadcast(ready, 0)
                        step_s = float(ready.item()) or None
                    if step_s is not None:
                        decide_budget(step, step_s)
            if clock is not None:  # --max-steps came first: the run's length is what it did
                schedule = Schedule(step, min(schedule.warmup, step // 2), schedule.budget_minutes)
            checkpoint(step)
        finally:
            logger.close()
    if info.is_main and not interrupted and step >= last_step:
        write_backbone(model.backbone.state_dict(), spec, run_dir / "backbone.safetensors")
        if model.backbone_b is not None and spec_b is not None:
            write_backbone(model.backbone_b.state_dict(), spec_b, run_dir / "backbone_b.safetensors")
    if interrupted and info.is_main:
        print(f"stopped by signal at step {step}; checkpoint saved to {ckpt_dir / 'last.pt'}", file=sys.stderr)
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


ONLINE_PROTOCOL = "online_knn.protocol"
"""The metrics key of the online kNN monitor's protocol (a sentence); its values are ``online_knn.top1/top5``."""


def _collective(device: torch.device) -> torch.device:
    """Where tensors for a collective live: the GPU under NCCL, else the CPU (gloo)."""
    return device if device.type == "cuda" else torch.device("cpu")


def _quiet(text: str) -> None:
    """Messages of ranks other than 0 go nowhere."""


def _last_step(cfg: TrainConfig, schedule: Schedule, step: int) -> int:
    """Where this process stops: the schedule's end, or ``--max-steps`` when sooner. While a budget is measured:
    ``--max-steps``, or no limit yet."""
    if schedule.total is None:
        return cfg.max_steps if cfg.max_steps is not None else sys.maxsize
    return schedule.total if cfg.max_steps is None else min(cfg.max_steps, schedule.total)


def _knn_words(row: Mapping[str, float]) -> str:
    return "online kNN " + ", ".join(f"{key.removeprefix('online_knn.')} {value:.1f}%" for key, value in row.items())


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def run_header(
    cfg: TrainConfig,
    world_size: int,
    device: torch.device,
    data: TrainingData,
    model: Any,
    specs: tuple[EncoderSpec, EncoderSpec | None],
    steps_per_epoch: int,
    schedule: Schedule,
) -> list[str]:
    """What is about to be trained, in a few lines: data, model, device, batch, length and schedule, run folder."""
    s = data.summary
    shape = s.get("shape")
    shape_words = "x".join(map(str, shape)) if isinstance(shape, list | tuple) else str(shape)
    classes = f", {s['classes']} classes" if s.get("classes") else ", unlabelled"
    lines = [f"vicreg train: {cfg.modality}{' + ' + cfg.modality_b if cfg.modality_b else ''} -> {cfg.out}"]
    lines.append(
        f"  data        {s.get('source')} ({s.get('split')}): {s.get('count')} samples of {shape_words}{classes}"
    )
    for branch, spec, backbone in (("", specs[0], model.backbone), (" (B)", specs[1], model.backbone_b)):
        if spec is not None:
            lines.append(
                f"  encoder{branch:<4} {spec.name}: {_params(backbone):,} parameters, {spec.feature_dim} features"
            )
    expander = f"{cfg.model.expander}" + (f", branch B {cfg.model.expander_b}" if cfg.model.expander_b else "")
    lines.append(
        f"  expander    {expander}: {_params(model.expander) + _params(model.expander_b):,} parameters "
        f"({_params(model):,} in all)"
    )
    precision = "fp32" if cfg.precision == "fp32" else f"{cfg.precision} autocast (loss in fp32)"
    lines.append(
        f"  device      {device}, {precision}, {world_size} process{'es' if world_size > 1 else ''}, batch "
        f"{cfg.batch_size // world_size} per process ({cfg.batch_size} global)"
    )
    if schedule.total is None:
        cap = f", at most {cfg.max_steps} steps (--max-steps)" if cfg.max_steps else ""
        lines.append(
            f"  length      set by --budget-minutes {schedule.budget_minutes:g} after timing the first steps"
            f"{cap}; --epochs {cfg.epochs} is ignored ({steps_per_epoch} steps per epoch)"
        )
    else:
        stop = _last_step(cfg, schedule, 0)
        length = f"{schedule.total} steps = {schedule.total / steps_per_epoch:.4g} epochs of {steps_per_epoch} steps"
        if schedule.budget_minutes is not None:
            length += f", bought by a {schedule.budget_minutes:g}-minute budget (stored in the checkpoint)"
        if stop < schedule.total:
            length += f"; stops at step {stop} (--max-steps)"
        lines.append(f"  length      {length}")
    peak = scaled_lr(cfg.optim.base_lr, cfg.batch_size)
    lines.append(
        f"  schedule    {cfg.optim.name}, peak lr {peak:.4g} (base {cfg.optim.base_lr:g} x {cfg.batch_size}/256), "
        f"{min(schedule.warmup, schedule.total or schedule.warmup)} warm-up steps, cosine to "
        f"{peak * cfg.optim.final_lr_ratio:.3g}"
        + (f" at step {schedule.total}" if schedule.total is not None else " at the budget's end")
    )
    lines.append(f"  run folder  {cfg.out} (checkpoints every {cfg.ckpt_every} steps, {cfg.keep_checkpoints} kept)")
    return lines


def budget_words(schedule: Schedule, step: int, steps_per_epoch: int, step_s: float, elapsed_s: float) -> str:
    """The line that says what a time budget bought."""
    assert schedule.total is not None and schedule.budget_minutes is not None
    return (
        f"budget: {schedule.budget_minutes:g} minutes buy {schedule.total} steps = "
        f"{schedule.total / steps_per_epoch:.3g} epochs ({step_s:.3g} s per step measured over the first {step}; "
        f"{elapsed_s:.0f} s spent so far); warm-up {min(schedule.warmup, schedule.total)} steps, cosine to step "
        f"{schedule.total}"
    )


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


def _newest_readable(
    folder: Path, device: torch.device, say: Callable[[str], None]
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``folder`` that loads (``last.pt``, then the kept ``step_*.pt``), each damaged one
    before it reported; ``None`` when there is none. Raises :class:`CheckpointError` when none loads."""
    candidates = checkpoint_candidates(folder)
    errors: list[CheckpointError] = []
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location=device)
        except CheckpointError as err:
            errors.append(err)
            continue
        for skipped in errors:
            say(f"warning: {skipped}")
        if errors:
            say(f"warning: skipped {len(errors)} damaged checkpoint(s); resuming from the previous one, {path}")
        return path, state
    if errors:
        raise CheckpointError(no_readable_checkpoint(folder, errors))
    return None


def _resume(
    path: Path,
    state: dict[str, Any],
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    probe: OnlineProbe | None = None,
) -> int:
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
