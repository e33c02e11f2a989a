"""VICReg pretraining: one code path for one process and for ``torchrun`` (DDP).

:func:`train` is the loop; :func:`_setup` builds what it needs, in order, into one :class:`_Run`; :func:`_step`
is one step's forward and loss. Under torchrun (``WORLD_SIZE > 1`` in the environment) it joins the process
group, wraps the model in DistributedDataParallel and lets the loss gather the global batch; in one process all
of that is skipped. Everything that decides a step's outcome is a function of the step number (data order: seed
and epoch; views: seed, step and rank; learning rate: the schedule), so a run resumed from its last checkpoint
continues exactly as if it had never stopped.

Gradient accumulation is deliberately not offered: VICReg's variance and covariance are batch statistics, so
accumulating the gradients of small batches is not the gradient of the large batch. Use more processes (the
loss gathers the global batch) or a smaller expander instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from vicreg.budget import Budget, Schedule, budget_words, plan_schedule
from vicreg.build import (
    BatchLoader,
    LabelFreeMonitor,
    TrainingData,
    autocast_dtype,
    checkpoint_meta,
    label_free_monitor,
    resolve_device,
    run_data_kind,
    setup_distributed,
)
from vicreg.checkpoint import save_keeping, write_backbone
from vicreg.config import TrainConfig, config_to_dict
from vicreg.data.fingerprint import data_fingerprint
from vicreg.data.loaders import is_worker_exit
from vicreg.diagnostics import collapse_stats
from vicreg.distributed import DistInfo, get_dist_info
from vicreg.files import atomic_write, remove_partial_writes
from vicreg.loss import VICRegOutput, vicreg_loss, vicreg_multiview_loss
from vicreg.models import EncoderSpec
from vicreg.monitors import OnlineProbe
from vicreg.optim import build_optimizer, scaled_lr, set_lr
from vicreg.resume import check_changes, newest_readable, record_resume, restore, training_state
from vicreg.resume_rules import ResumeChanges, describe
from vicreg.runlock import hold_run
from vicreg.runlog import RunHeader, RunLog, TermWindow
from vicreg.stop import StopSignal
from vicreg.threads import StepThreads, ThreadChoice, ThreadTuner, candidate_counts, default_threads, fixed_threads
from vicreg.trackers import Tracker, open_trackers, parse_backends
from vicreg.weights import load_initial_weights

__all__ = ["NonFiniteLossError", "Objective", "TrainResult", "train"]

TERMS = ("loss", "invariance", "variance", "covariance")

Objective = Callable[[Tensor, Tensor], VICRegOutput]
Report = Callable[[int, Mapping[str, float]], bool]
"""``report(step, scores) -> stop``: called with the label-free scores every ``label_free_every`` steps (vicreg
tune's pruner); ``True`` saves and stops the run (:attr:`TrainResult.pruned`)."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the term."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict[str, float]
    interrupted: bool = False
    is_main: bool = True
    pruned: bool = False
    """``report`` asked the run to stop early (it saved its checkpoint first)."""
    label_free: dict[str, float] = field(default_factory=dict)
    """The last label-free measures logged (empty when none were)."""
    stop_signal: int | None = None
    """The signal that stopped the run (``interrupted``), for the exit status: 128 + its number."""


def train(
    cfg: TrainConfig,
    *,
    objective: Objective | None = None,
    clock: Callable[[], float] = time.monotonic,
    step_timer: Callable[[], float] = time.perf_counter,
    report: Report | None = None,
    label_free_views: TrainConfig | None = None,
) -> TrainResult:
    """Pretrain (or resume) the run described by ``cfg``; returns where it stands at the end.

    ``objective(z_a, z_b)`` replaces the VICReg loss of ``cfg.loss``: it returns a :class:`VICRegOutput` whose
    ``loss`` is minimised and whose three terms are logged under the usual names (for ablations, e.g. a
    SimSiam-style cosine term plus :func:`vicreg.variance_covariance_loss`). It sees the local batch; gathering
    across processes is its job.

    With ``cfg.budget_minutes`` the total number of steps is decided after the first steps, read on ``clock``
    (:class:`vicreg.budget.Budget`), so that the whole call ends within the budget; the decided total is stored
    in every checkpoint and a resumed run keeps it.

    On a CPU device without ``cfg.threads`` the thread count is chosen by timing the steps on ``step_timer``
    (:class:`vicreg.threads.StepThreads`); the budget times its steps once the count is chosen. The caller's
    thread count is restored at the end.

    Every ``cfg.label_free_every`` steps the label-free measures of the representation on held-out rows are
    logged and passed to ``report(step, scores)``; when it returns ``True`` the run saves and stops (pruned).
    LiDAR's augmented copies come from the views of ``label_free_views`` (default ``cfg``; vicreg tune passes
    its base config, so that trials with different views are scored with the same ones).

    The run folder is locked for the whole call (:func:`vicreg.runlock.hold_run`; rank 0 under torchrun): a
    second process on the same ``cfg.out`` raises :class:`vicreg.runlock.RunBusyError` naming this one.
    SIGTERM/SIGINT save a checkpoint at the next step boundary and return with ``interrupted`` (every rank stops
    at the same step); a second signal before that save is done raises :class:`vicreg.stop.StopAborted`.
    """
    fix = "wait for it, stop it, or use another --out folder"
    with hold_run(cfg.out, "train", rank=get_dist_info().rank, fix=fix, warn=lambda text: _say(f"warning: {text}")):
        return _train(cfg, objective, clock, step_timer, report, label_free_views)


def _train(
    cfg: TrainConfig,
    objective: Objective | None,
    clock: Callable[[], float],
    step_timer: Callable[[], float],
    report: Report | None,
    label_free_views: TrainConfig | None,
) -> TrainResult:
    threads_before = torch.get_num_threads()
    run = _setup(cfg, objective, clock)
    _setup_label_free(run, label_free_views or cfg)
    if report is not None and run.info.world_size > 1:
        raise ValueError("a report callback (vicreg tune) runs in one process; train without torchrun")
    spe, interrupted, pruned, stop_signal = run.steps_per_epoch, False, False, None
    with StopSignal(getattr(run.data.loader, "request_stop", None)) as stop:
        try:
            epoch = run.step // spe
            batches = _batches(run.data.loader, epoch, run.step % spe)
            while run.step < run.last_step:
                stop_signal = _stop_agreed(run, stop.received)
                if stop_signal is not None:  # SIGTERM/SIGINT (on any rank): save at this step boundary and stop
                    interrupted = True
                    break
                if run.step // spe != epoch:  # each epoch has its own order
                    epoch = run.step // spe
                    batches = _batches(run.data.loader, epoch, 0)
                if run.threads is not None:  # the count for this step: a trial's, or the chosen one
                    torch.set_num_threads(run.threads.count())
                began = step_timer()
                batch = next(batches, None)
                if batch is None:  # a loader worker died after a stop signal: part of the stop
                    batch = _after_worker_exit(run, stop.received, epoch)
                    if batch is None:
                        interrupted, stop_signal = True, stop.received
                        break
                images, labels = batch

                # the VICReg step: two views (and local crops) seeded by (seed, step, rank), forward under
                # autocast, the loss in fp32, backward, the optimiser's update at the schedule's rate
                v_a, v_b, crops = _views(run, images.to(run.device, non_blocking=True))
                set_lr(run.optimizer, run.schedule.lr(run.step, run.peak_lr, cfg.optim.final_lr_ratio))
                out, z_a = _step(run, v_a, v_b, crops, objective)
                run.optimizer.zero_grad(set_to_none=True)
                run.scaler.scale(out.loss).backward()
                run.scaler.step(run.optimizer)
                run.scaler.update()
                if run.probe is not None:
                    run.probe.step(labels)
                run.window.add(torch.stack([t.detach() for t in out]), run.step)  # no host sync here
                run.step += 1
                run.log.advance()
                if run.threads is not None:
                    _time_threads(run, step_timer() - began)

                if run.step % cfg.log_every == 0 or run.step == run.last_step:
                    _log_window(run, z_a)
                if run.data.monitor is not None and _knn_due(run.step, spe, cfg.knn_every):
                    _monitor(run)
                due = run.label_free is not None and run.step % cfg.label_free_every == 0
                if due and _label_free(run, report) and run.step != run.last_step:
                    pruned = True  # the tune's pruner stopped this trial: save at this step and return
                    break
                if run.step % cfg.ckpt_every == 0 and run.step != run.last_step:
                    _checkpoint(run)
                if run.budget is not None and not (run.threads and run.threads.measuring):
                    _time_budget(run)  # a time budget: decide the total once the steps are timed
            if run.budget is not None:  # --max-steps came first: the run's length is what it did
                run.schedule = run.schedule.with_total(run.step)
            if interrupted:
                _say_stopping(run, stop)
            _checkpoint(run)
            stop.saved()
        finally:
            if interrupted and hasattr(run.data.loader, "close"):
                run.data.loader.close()  # the workers end now, not at interpreter exit
            run.log.close()
            torch.set_num_threads(threads_before)
            if run.trackers is not None:
                run.trackers.finish("failed" if sys.exc_info()[0] is not None else "finished")
    info, model, run_dir, step = run.info, run.model, run.run_dir, run.step
    if info.is_main and not interrupted and step >= run.last_step:
        spec, spec_b = run.specs
        write_backbone(model.backbone.state_dict(), spec, run_dir / "backbone.safetensors")
        if model.backbone_b is not None and spec_b is not None:
            write_backbone(model.backbone_b.state_dict(), spec_b, run_dir / "backbone_b.safetensors")
    if interrupted and info.is_main:
        last = run_dir / "checkpoints" / "last.pt"
        print(f"stopped by signal at step {step}; checkpoint saved to {last}", file=sys.stderr)
    return TrainResult(
        run_dir, step, run.metrics, interrupted, info.is_main, pruned, run.label_free_scores, stop_signal
    )


def _views(run: _Run, images: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """The step's pair (and local crops), drawn from a generator seeded by (seed, step, rank)."""
    run.generator.manual_seed(_view_seed(run.cfg.seed, run.step, run.info.rank))
    crops: list[Tensor] = []
    if getattr(run.data.views, "local_crops", 0) > 0:  # the same pair as without crops; the crops draw after it
        (v_a, v_b), crops = run.data.views.multi(images, generator=run.generator)
    else:
        v_a, v_b = run.data.views(images, generator=run.generator)
    if run.cfg.channels_last:
        v_a, v_b = (v.contiguous(memory_format=torch.channels_last) for v in (v_a, v_b))
        crops = [v.contiguous(memory_format=torch.channels_last) for v in crops]
    return v_a, v_b, crops


def _step(
    run: _Run, v_a: Tensor, v_b: Tensor, crops: list[Tensor], objective: Objective | None
) -> tuple[VICRegOutput, Tensor]:
    """The forward pass (under autocast) and the loss (in fp32): the loss output and the embeddings of view A."""
    amp, loss = run.amp_dtype, run.cfg.loss
    with torch.autocast(run.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        if run.probe is not None:
            run.probe.arm()
        if crops:  # through forward, so that DDP sees every view
            (z_a, z_b), z_crops = run.forward(v_a, v_b, local_views=crops)
        else:
            (z_a, z_b), z_crops = run.forward(v_a, v_b), []
    if objective is not None:
        return objective(z_a, z_b), z_a
    # LossConfig's fields are the loss's arguments; the loop's NaN guard checks without a host sync
    coeffs: dict[str, Any] = {k: v for k, v in asdict(loss).items() if k != "multiview_weighting"}
    coeffs["check_finite"] = False
    if not z_crops:
        return vicreg_loss(z_a, z_b, **coeffs), z_a
    return vicreg_multiview_loss([z_a, z_b], z_crops, weighting=loss.multiview_weighting, **coeffs), z_a


# ------------------------------------------------------------------------------------------------ setup


@dataclass
class _Run:
    """Everything the loop reads and advances, built once by :func:`_setup`."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    run_dir: Path
    data: TrainingData
    model: Any  # models.VICReg (SyncBatchNorm-converted under torchrun with sync_bn)
    forward: Callable[..., Any]  # the model, under DDP and torch.compile when asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    probe: OnlineProbe | None
    meta: dict[str, Any]  # what every checkpoint stores beside the state: data kind, encoder specs, init
    steps_per_epoch: int
    peak_lr: float
    schedule: Schedule
    budget: Budget | None  # a time budget still timing the steps
    step: int
    last_step: int
    previous_step: int | None  # the step of the intact checkpoint at last.pt, kept by the next save
    log: RunLog
    clock: Callable[[], float]
    threads: StepThreads | None  # the thread count by measurement (a CPU device, no --threads)
    generator: torch.Generator
    window: TermWindow  # the loss terms since the last log line, and the NaN guard's record
    specs: tuple[EncoderSpec, EncoderSpec | None]  # what the backbone files say they hold
    metrics: dict[str, float] = field(default_factory=dict)
    label_free: LabelFreeMonitor | None = None  # rank 0, when label_free_every > 0
    label_free_scores: dict[str, float] = field(default_factory=dict)
    trackers: Tracker | None = None  # MLflow / W&B (rank 0); TensorBoard is RunLog's
    stop_group: Any = None  # under torchrun: the (gloo) process group on which the ranks agree to stop
    stopping: bool = False  # the stop's checkpoint is being saved


def _setup(cfg: TrainConfig, objective: Objective | None, clock: Callable[[], float]) -> _Run:
    """Everything before the first step, in order: processes and device, run folder, data and model, optimiser,
    the checkpoint to resume from, the schedule (or the budget that will decide it), the log and its header."""
    started = clock()
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
    model, spec, spec_b = data.model(cfg)
    meta = checkpoint_meta(data, spec, spec_b)
    if cfg.model.init and not (ckpt_dir / "last.pt").is_file():  # a resumed run has its own weights
        meta["init"] = load_initial_weights(
            model.backbone, cfg.model.init, backbone_name=spec.name, backbone_kwargs=spec.kwargs, download=cfg.download
        )
    if cfg.sync_bn and info.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    model.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    steps_per_epoch = len(data.loader)
    if steps_per_epoch < 1:
        raise ValueError(f"{cfg.data} gives no full batch of {cfg.batch_size} per epoch; lower --batch-size")
    peak_lr = scaled_lr(cfg.optim.base_lr, cfg.batch_size)
    o = cfg.optim
    optimizer = build_optimizer(
        o.name, model, lr=peak_lr, weight_decay=o.weight_decay, momentum=o.momentum, eta=o.lars_eta, clip_lr=o.lars_clip
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    probe = OnlineProbe(model.backbone, model.feature_dim, data.num_classes, device) if data.num_classes else None

    step, previous_step = 0, None
    meta["data"] = _fingerprint(data, cfg)
    found = newest_readable(ckpt_dir, device, _say if info.is_main else lambda text: None)
    changes = None
    if found is not None:  # what this resume changes: refused, or announced once the state is back
        changes = check_changes(
            found[0], found[1], config_to_dict(cfg), meta["data"], new_data=cfg.resume_with_new_data
        )
        step = restore(found[0], found[1], config_to_dict(cfg), model, optimizer, scaler, probe)
        previous_step = step if found[0].name == "last.pt" else None
    if info.is_main and (found is None or (changes is not None and changes.announced)):
        text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)  # the config in force
        atomic_write(run_dir / "config.yaml", lambda f: f.write(text.encode()))
    schedule = plan_schedule(
        epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=cfg.optim.warmup_epochs,
        budget_minutes=cfg.budget_minutes, stored=found[1].get("schedule") if found else None,
        resumed=found is not None, where=str(cfg.out),
    )  # fmt: skip
    budget = None
    if schedule.total is None and cfg.max_steps is not None and Budget.too_short(step, cfg.max_steps):
        schedule = schedule.with_total(cfg.max_steps)  # --max-steps ends it before its steps could be timed
    elif schedule.total is None:
        knn_every = cfg.knn_every if data.monitor else 0
        minutes = schedule.budget_minutes or 0.0
        budget = Budget(minutes, started, step, steps_per_epoch, knn_every, cfg.ckpt_every, cfg.max_steps, clock)

    if objective is not None and getattr(data.views, "local_crops", 0) > 0:
        raise ValueError("an objective hook sees the pair only; train without local crops (views.local_crops 0)")
    ddp_model: nn.Module = model
    if info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(ddp_model) if cfg.compile else ddp_model

    backends = parse_backends(cfg.log)
    log = RunLog(run_dir, info.is_main, cfg.progress, schedule.total or 0, step, tensorboard="tensorboard" in backends)
    if changes is not None and info.is_main:
        _record_resume(log, run_dir, step, changes)
    threads, threads_line = _setup_threads(cfg.threads, device, info)
    run = _Run(
        cfg, info, device, amp_dtype, run_dir, data, model, forward, optimizer, scaler, probe, meta, steps_per_epoch,
        peak_lr, schedule, budget, step, schedule.last_step(cfg.max_steps), previous_step, log, clock, threads,
        torch.Generator(device=device if device.type in ("cuda", "cpu") else "cpu"), TermWindow(TERMS, device),
        (spec, spec_b),
    )  # fmt: skip
    if info.world_size > 1:  # a CPU group even under NCCL: the per-step stop flag needs no GPU sync
        run.stop_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    for line in _header(cfg, run, (spec, spec_b), found[0] if found else None).lines():
        log.message(line)
    if threads_line:
        log.message(threads_line)
    model.train()
    return run


def _setup_threads(requested: int | None, device: torch.device, info: DistInfo) -> tuple[StepThreads | None, str]:
    """A fixed count (``--threads``, or OMP_NUM_THREADS outside torchrun) is set now; on a CPU device without
    one, a :class:`StepThreads` that times the first steps at each candidate count up to this process's share
    of the cores. Under torchrun every process follows the same trial at the same steps and takes rank 0's
    choice and rank 0's verdict on drift (its steps wait for each other in the gradient all-reduce anyway, so
    one process's timing speaks for all, and they re-measure together). Also the line the header ends with."""
    fixed = fixed_threads(requested)
    if fixed is not None:
        torch.set_num_threads(fixed[0])
        return None, f"  threads     {fixed[0]} (fixed by {fixed[1]})" if device.type == "cpu" else ""
    if device.type != "cpu":
        return None, ""
    share = default_threads()
    torch.set_num_threads(share)
    if share == 1:
        return None, "  threads     1 (this process's share of the cores)"
    agree = (lambda verdict: int(_rank0(verdict, device))) if info.world_size > 1 else (lambda verdict: verdict)
    return StepThreads(candidate_counts(share), tuner=ThreadTuner(), agree=agree), ""


def _header(
    cfg: TrainConfig, run: _Run, specs: tuple[EncoderSpec, EncoderSpec | None], found: Path | None
) -> RunHeader:
    """What is about to be trained (:class:`vicreg.runlog.RunHeader`)."""
    model, o, expander_b = run.model, cfg.optim, cfg.model.expander_b
    branches = (("", specs[0], model.backbone), (" (B)", specs[1], model.backbone_b))
    return RunHeader(
        modalities=cfg.modality + (f" + {cfg.modality_b}" if cfg.modality_b else ""), out=str(cfg.out),
        data=run.data.summary,
        encoders=tuple((b, spec.name, _params(m), spec.feature_dim) for b, spec, m in branches if spec is not None),
        expander=cfg.model.expander + (f", branch B {expander_b}" if expander_b else ""),
        expander_params=_params(model.expander) + _params(model.expander_b), params=_params(model),
        device=str(run.device), precision=cfg.precision, world_size=run.info.world_size, batch_size=cfg.batch_size,
        schedule=run.schedule, steps_per_epoch=run.steps_per_epoch, epochs=cfg.epochs, max_steps=cfg.max_steps,
        optimizer=o.name, base_lr=o.base_lr, peak_lr=run.peak_lr, final_lr_ratio=o.final_lr_ratio,
        ckpt_every=cfg.ckpt_every, keep_checkpoints=cfg.keep_checkpoints,
        init=run.meta.get("init"), init_source=cfg.model.init or "", resumed_from=str(found) if found else None,
        step=run.step,
    )  # fmt: skip


def _setup_label_free(run: _Run, views: TrainConfig) -> None:
    """Rank 0: the label-free monitor (``label_free_every`` > 0) and the trackers other than TensorBoard."""
    cfg = run.cfg
    if not run.info.is_main:
        return
    every = cfg.label_free_every
    if every > 0 and run.last_step // every > run.step // every:  # a measure falls within this run
        try:
            run.label_free = label_free_monitor(run.data.kind, cfg, run.specs, run.device, run.amp_dtype, views)
        except (ValueError, FileNotFoundError, KeyError) as err:  # e.g. a stream without a held-out split
            run.log.message(f"label-free measures off: {err}")
        else:
            run.log.message(f"label-free measures every {every} steps on {run.label_free.sample.note}")
    others = [b for b in parse_backends(cfg.log) if b != "tensorboard"]
    if others:
        run.trackers = open_trackers(others, run.run_dir, run.run_dir.name)
        run.trackers.log_params(config_to_dict(cfg))
        tracker = run.trackers
        run.log.sinks.append(lambda row: tracker.log_scalars(row, int(row["step"])))


def _fingerprint(data: TrainingData, cfg: TrainConfig) -> dict[str, Any]:
    """The training data's fingerprint (:func:`vicreg.data.fingerprint.data_fingerprint`), kept in checkpoints."""
    loader: Any = data.loader
    rows = getattr(loader, "dataset", None)
    rows = rows if rows is not None else getattr(loader, "source", None)
    try:
        return data_fingerprint(rows if rows is not None else loader.x, source=cfg.data)
    except TypeError:  # a stream of unknown length: its name only
        return {"source": cfg.data, "rows": None, "shape": [], "dtype": "", "sample": 0, "sample_hash": None}


def _record_resume(log: RunLog, run_dir: Path, step: int, changes: ResumeChanges) -> None:
    """Say what this resume changes (one line) and append it to RUN/resumes.jsonl."""
    if changes.announced:
        log.message(f"resuming with changes: {describe(changes.announced)}")
    record_resume(run_dir, step, changes)


# ------------------------------------------------------------------------------------------------ loop parts


def _label_free(run: _Run, report: Report | None) -> bool:
    """Log the label-free measures of the representation now (rank 0) and hand them to ``report``: whether to
    stop. Their time is taken out of a budget's step timing."""
    assert run.label_free is not None
    began = run.clock()
    scores = run.label_free(run.model)
    run.label_free_scores = scores
    run.log.log({"step": run.step, "epoch": round(run.step / run.steps_per_epoch, 4), **{
        f"label_free.{k}": v for k, v in scores.items()
    }})  # fmt: skip
    words = ", ".join(f"{k} {v:.3g}" for k, v in scores.items())
    run.log.message(f"step {run.step}: label-free {words} (no labels)")
    if run.budget is not None:
        run.budget.extra_s += run.clock() - began
    return bool(report(run.step, scores)) if report is not None else False


def _stop_agreed(run: _Run, received: int | None) -> int | None:
    """The stop signal every rank acts on at this step boundary: this one's, or under torchrun the largest
    signal number any rank received (an all-reduce of one integer on a CPU group each step: no GPU sync)."""
    if run.info.world_size == 1:
        return received
    flag = torch.tensor([received or 0], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=run.stop_group)
    agreed = int(flag.item())
    if agreed and received is None and hasattr(run.data.loader, "request_stop"):
        run.data.loader.request_stop()  # another rank got the signal: this one stops too
    return agreed or None


def _after_worker_exit(run: _Run, received: int | None, epoch: int) -> tuple[Tensor, Tensor | None] | None:
    """The batch after a loader ended early: ``None`` (stop now) in one process; under torchrun the other ranks
    run this step before they learn of the stop, so this one reads it from a fresh iterator."""
    if received is None:
        raise RuntimeError("the data loader ended before the epoch did")
    if run.info.world_size == 1:
        return None
    return next(_batches(run.data.loader, epoch, run.step % run.steps_per_epoch))


def _say_stopping(run: _Run, stop: StopSignal) -> None:
    """The one line that says a stop's checkpoint is being saved (rank 0)."""
    run.stopping = True
    if run.info.is_main:
        again = "; press Ctrl-C again to abort without saving" if stop.abort_on_second else ""
        _say(f"stopping: saving a checkpoint at step {run.step}{again}")


def _log_window(run: _Run, z_a: Tensor) -> None:
    """The log window's mean terms (the NaN guard first), rate and learning rate; collapse statistics when due."""
    cfg, step = run.cfg, run.step
    _guard(run.window)
    run.metrics, steps, seconds = run.window.read()
    row: dict[str, Any] = {
        "step": step,
        "epoch": round(step / run.steps_per_epoch, 4),
        "lr": run.optimizer.param_groups[0]["lr"],
        **run.metrics,
        "images_per_s": steps * cfg.batch_size / max(seconds, 1e-9),
        **(run.probe.read() if run.probe is not None else {}),
    }
    if step % cfg.diag_every == 0 or step == run.last_step:
        stats = collapse_stats(z_a.detach().float(), gamma=cfg.loss.gamma)
        row.update({f"diag.{k}": v for k, v in stats.items()})
    run.log.log(row)


def _guard(window: TermWindow) -> None:
    """The NaN guard: stop with a :class:`NonFiniteLossError` naming the first step whose loss was not finite."""
    bad = window.first_non_finite()
    if bad is not None:
        raise NonFiniteLossError(
            f"the loss became non-finite at step {bad[0]} (terms: {', '.join(bad[1])}); the run stopped and its "
            "last good checkpoint is kept. Lower the learning rate, use fp32/bf16 instead of fp16, or check the "
            "data for NaN/inf values"
        )


def _checkpoint(run: _Run, guess: int | None = None) -> float:
    """Save the state at this step (rank 0; the NaN guard first) and wait for every rank; returns the seconds.
    ``guess``: a budget's first guess of the total, which the schedule holds until the budget decides."""
    if guess is not None:
        run.schedule = run.schedule.with_total(guess)
    began = run.clock()
    _guard(run.window)
    if run.info.is_main:
        state = training_state(
            run.step, config_to_dict(run.cfg), run.model, run.optimizer, run.scaler, run.probe,
            world_size=run.info.world_size, schedule=run.schedule.to_dict(), **run.meta,
        )  # fmt: skip
        keep = run.cfg.keep_checkpoints
        for attempt in range(3):  # torch's SIGCHLD handler raises a worker's death here; after a stop it is ours
            try:
                save_keeping(state, run.run_dir / "checkpoints", keep=keep, previous_step=run.previous_step)
                break
            except RuntimeError as err:
                if not (run.stopping and is_worker_exit(err)) or attempt == 2:
                    raise
        run.previous_step = run.step
    if run.info.world_size > 1:
        dist.barrier()
    spent = run.clock() - began
    if run.budget is not None:  # the budget plans for it
        run.budget.spent_on_checkpoint(spent)
    return spent


def _monitor(run: _Run) -> float:
    """The online kNN monitor: logged (its protocol named) and printed; returns the seconds it took."""
    assert run.data.monitor is not None
    began = run.clock()
    run.model.eval()
    acc = run.data.monitor(run.model.embed, run.device, run.amp_dtype)
    run.model.train()
    online = {f"online_{key}": value for key, value in acc.items()}
    run.log.knn(run.step, round(run.step / run.steps_per_epoch, 4), online, run.data.monitor.protocol)
    run.metrics.update(online)
    spent = run.clock() - began
    if run.budget is not None:  # the budget plans for it
        run.budget.spent_on_monitor(spent)
    return spent


def _time_threads(run: _Run, step_s: float) -> None:
    """After each step: a trial that ends gives the count (rank 0's under torchrun), said and logged."""
    assert run.threads is not None
    choice = run.threads.record(step_s)
    if choice is None:
        return
    if run.info.world_size > 1:
        choice = ThreadChoice(int(_rank0(choice.threads, run.device)), choice.seconds)
    before = run.threads.choice
    run.threads.settle(choice)
    torch.set_num_threads(choice.threads)
    run.log.log({"step": run.step, **choice.row()})  # every measurement, a change or not
    if before is None or before.threads != choice.threads:
        run.log.message(f"  threads     {choice.words('--threads N fixes it')}")


def _time_budget(run: _Run) -> None:
    """A budgeted run still timing its steps: once the step time is known, decide the total (timing a monitor and
    a checkpoint first, see :meth:`Budget.decide`), store it in a checkpoint and say what the budget bought."""
    budget, at = run.budget, run.step
    assert budget is not None
    budget.begin(at)
    step_s = budget.step_s(at)
    if run.info.world_size > 1:  # decide at the same step on every rank: rank 0's timing
        step_s = _rank0(step_s or 0.0, run.device) or None
    if step_s is None:
        return
    total = budget.decide(at, step_s, lambda: _monitor(run), lambda guess: _checkpoint(run, guess))
    if run.info.world_size > 1:  # every rank takes rank 0's decision
        total = int(_rank0(total, run.device))
    run.schedule, run.last_step, run.budget = run.schedule.with_total(total), total, None
    _checkpoint(run)
    run.log.set_total(total)
    run.log.message(budget_words(run.schedule, at, run.steps_per_epoch, step_s, run.clock() - budget.started))


def _batches(loader: BatchLoader, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    loader.set_epoch(epoch, start_batch)
    yield from loader


def _knn_due(step: int, steps_per_epoch: int, knn_every: int) -> bool:
    """The online kNN monitor runs at the end of every ``knn_every``-th epoch (0: never)."""
    return knn_every > 0 and step % steps_per_epoch == 0 and (step // steps_per_epoch) % knn_every == 0


def _view_seed(seed: int, step: int, rank: int) -> int:
    """A distinct, reproducible seed for each (run seed, step, rank)."""
    return (seed * 1_000_003 + step) * 4099 + rank


def _rank0(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (float64: integers up to 2**53 are exact)."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.broadcast(tensor, 0)  # under NCCL from the GPU, under gloo from the CPU
    return float(tensor.item())


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
