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
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

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
from vicreg.distributed import DistInfo, get_dist_info
from vicreg.loss import VICRegOutput, vicreg_loss
from vicreg.models import VICReg
from vicreg.optim import build_optimizer, scaled_lr, set_lr, warmup_cosine

__all__ = ["NonFiniteLossError", "TrainResult", "train"]

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


# ------------------------------------------------------------------------------------------------ setup


def setup_distributed(device: str) -> DistInfo:
    """Join torchrun's process group when there is one (NCCL on CUDA, gloo otherwise); a no-op alone."""
    info = get_dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        backend = "nccl" if use_cuda else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend)
        else:
            # torchrun keeps its key-value store across restarts (--max-restarts) and the process group's keys
            # are the same each time: restarted workers read the dead workers' gloo addresses and failed to
            # connect or hung (8 of 14 restarts; docs/reliability.md). A prefix per attempt keeps them apart.
            store, rank, world_size = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"vicreg/attempt{restart}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
        info = get_dist_info()
    return info


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return device


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (it uses a gradient scaler); use bf16 on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


@dataclass
class _Data:
    loader: Any  # InMemoryLoader | FolderLoader: set_epoch(epoch, start_batch), iteration -> (images, labels)
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 0  # > 0 when the training images have labels (for the online linear probe)
    eval_train: Any = None  # ArrayDataset (or FloatArrayDataset) with labels, for the kNN monitor
    eval_test: Any = None
    channels_b: int = 0  # branch B's input channels / features, for two-modality pairs
    train_set: Any = None  # signals / tables / pairs: what their views are fitted on (vicreg.modalities)


def build_data(cfg: TrainConfig, info: DistInfo, device: torch.device) -> _Data:
    """The training loader (in memory for datasets that fit, streamed for image folders)."""
    from vicreg.data import ArrayDataset, InMemoryLoader, folder_loader, has_splits, is_image_folder, load

    if cfg.modality != "image" or cfg.modality_b:  # signals, tables, two-modality pairs
        from vicreg.modalities import build_array_data

        return build_array_data(cfg, info, device)

    if cfg.data_root is not None:
        os.environ["VICREG_DATA"] = os.pathsep.join(
            p for p in (str(cfg.data_root), os.environ.get("VICREG_DATA", "")) if p
        )
    per_rank = cfg.batch_size // info.world_size
    shard: dict[str, Any] = {"seed": cfg.seed, "rank": info.rank, "world_size": info.world_size}
    path = Path(cfg.data).expanduser()
    if is_image_folder(path):
        size = cfg.image_size or cfg.views.size
        loader = folder_loader(
            path, size, per_rank, shuffle=True, drop_last=True, num_workers=cfg.workers, strict=cfg.strict_data, **shard
        )
        channels, mean, std = load_probe_stats(loader)
        return _Data(loader, channels, mean, std, num_classes=len(loader.source.classes))
    train_set: ArrayDataset = load(cfg.data, "train", download=cfg.download, strict=cfg.strict_data)
    if len(train_set) < cfg.batch_size:
        raise ValueError(
            f"{cfg.data} has {len(train_set)} training images, fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size"
        )
    data = _Data(
        InMemoryLoader(train_set.to(device), per_rank, shuffle=True, drop_last=True, **shard),
        train_set.channels,
        train_set.mean,
        train_set.std,
        num_classes=0 if train_set.labels is None else int(train_set.labels.max()) + 1,
    )
    if cfg.eval_split and train_set.labels is not None and cfg.knn_every > 0 and not has_splits(cfg.data):
        # one labelled array has no split of its own (``load`` hands back the training images for any split):
        # the kNN monitor holds out disjoint queries from the training images
        data.eval_train = data.eval_test = train_set
    elif cfg.eval_split and train_set.labels is not None and cfg.knn_every > 0:
        try:
            test_set = load(cfg.data, cfg.eval_split, download=cfg.download)
        except (FileNotFoundError, ValueError):
            test_set = None
        if test_set is not None and test_set.labels is not None:
            data.eval_train, data.eval_test = train_set, test_set
    return data


def load_probe_stats(loader: Any) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Channels and channel statistics of a streamed folder, from its first batch."""
    from vicreg.data import channel_stats

    loader.set_epoch(0)
    images = next(iter(loader))[0]
    mean, std = channel_stats(images)
    return images.shape[1], tuple(mean), tuple(std)


def build_views(cfg: TrainConfig, data: _Data) -> Any:
    from vicreg.augment import PaperViews

    if data.train_set is not None:  # signals, tables, two-modality pairs
        from vicreg.modalities import build_array_views

        return build_array_views(cfg, data)

    v = cfg.views
    mean: tuple[float, ...]
    std: tuple[float, ...]
    if v.normalize == "imagenet":
        from vicreg.augment.images import IMAGENET_MEAN, IMAGENET_STD

        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = data.mean, data.std
        if min(std) <= 0:
            raise ValueError(
                f"the training images of {cfg.data} have a constant channel (standard deviation {std}); "
                "check the data, or normalise with --views.normalize imagenet"
            )
    jitter: dict[str, Any] = {
        "brightness": 0.4 * v.jitter_strength,
        "contrast": 0.4 * v.jitter_strength,
        "saturation": 0.2 * v.jitter_strength,
        "hue": min(0.5, 0.1 * v.jitter_strength),
    }
    view_a: dict[str, Any] = {}
    view_b: dict[str, Any] = {}
    if v.symmetric:
        view_a = view_b = {"blur_p": v.symmetric_blur_prob, "solarize_p": v.symmetric_solarize_prob}
    else:
        view_a = {"blur_p": v.blur_prob_a}
        view_b = {"blur_p": v.blur_prob_b, "solarize_p": v.solarize_prob_b}
    if len(mean) != data.channels:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return PaperViews(
        v.size,
        symmetric=v.symmetric,
        mean=mean,
        std=std,
        view_a=view_a,
        view_b=view_b,
        crop_scale=(v.crop_scale_min, 1.0),
        **jitter,
    )


def build_model(cfg: TrainConfig, channels: int, channels_b: int = 0) -> VICReg:
    """The model of ``cfg.model``; ``channels_b``: branch B's input channels when it has its own encoder (0: the
    same as branch A's)."""
    m = cfg.model
    backbone, dim = _encoder(cfg, m.backbone, channels, m.width)
    branch_b: dict[str, Any] = {}
    if m.backbone_b:
        branch_b["backbone_b"], branch_b["feature_dim_b"] = _encoder(
            cfg, m.backbone_b, channels_b or channels, m.width_b or m.width
        )
    if m.expander_b:
        branch_b["expander_b"] = m.expander_b
    return VICReg(backbone, m.expander, feature_dim=dim, **branch_b)


def _encoder(cfg: TrainConfig, name: str, channels: int, width: int) -> tuple[nn.Module, int]:
    """A backbone by name with the config's width (and depth) options, and its feature size."""
    from vicreg.models import BACKBONES, build_backbone

    kwargs: dict[str, Any] = {}
    if name in ("small_cnn", "resnet1d", "mlp"):
        kwargs["width"] = width
    if name == "mlp":
        kwargs["depth"] = cfg.model.depth
    module = build_backbone(name, small_images=cfg.model.small_images, in_channels=channels, **kwargs)
    dim = BACKBONES[name][1] if name in BACKBONES else None
    dim = dim or getattr(module, "feature_dim", None) or getattr(module, "num_features", None)
    if not isinstance(dim, int):
        raise ValueError(f"cannot tell the feature size of backbone {name!r}")
    return module, dim


# ------------------------------------------------------------------------------------------------ monitors


class OnlineProbe:
    """A linear classifier trained beside VICReg on the *detached* representation of view A.

    It reads the backbone's output through a forward hook and has its own optimiser, so it never touches the
    VICReg gradient; its running accuracy on the training batches shows whether the representation becomes
    linearly useful while training. Samples labelled ``-1`` (unlabelled) are ignored. Under torchrun each
    process trains its own probe on its shard; rank 0's is logged and checkpointed.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, device: torch.device) -> None:
        self.linear = nn.Linear(feature_dim, num_classes).to(device)
        self.optimizer = torch.optim.AdamW(self.linear.parameters(), lr=1e-3, weight_decay=0.0)
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, correct, count
        self._armed = False
        self._h: Tensor | None = None
        backbone.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: Any, out: Tensor) -> None:
        if self._armed:  # the first backbone call after arm(): view A
            self._h, self._armed = out.detach(), False

    def arm(self) -> None:
        self._armed, self._h = True, None

    def step(self, labels: Tensor | None) -> None:
        h, self._h, self._armed = self._h, None, False
        if h is None or labels is None:
            return
        labels = labels.to(h.device, non_blocking=True).long()
        with torch.autocast(h.device.type, enabled=False):
            logits = self.linear(h.float().flatten(1))
            known = labels >= 0
            loss_sum = F.cross_entropy(logits, labels.clamp_min(0), reduction="none").mul(known).sum()
            count = known.sum()
            self.optimizer.zero_grad(set_to_none=True)
            (loss_sum / count.clamp_min(1)).backward()
            self.optimizer.step()
        correct = ((logits.argmax(1) == labels) & known).sum()
        self.sums += torch.stack([loss_sum.detach(), correct, count]).double()

    def read(self) -> dict[str, float]:
        """Mean loss and accuracy (%) since the last read (one host sync)."""
        loss, correct, count = self.sums.tolist()
        self.sums.zero_()
        if count == 0:
            return {}
        return {"probe.loss": loss / count, "probe.acc": 100.0 * correct / count}

    def state_dict(self) -> dict[str, Any]:
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])


# ------------------------------------------------------------------------------------------------ logging


class _Logger:
    """metrics.jsonl, TensorBoard and a progress bar, on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, progress: bool, total: int, start: int) -> None:
        self.enabled = enabled
        if enabled:  # a killed run may have logged steps after its last checkpoint (or before its first)
            _drop_rows_after(run_dir / "metrics.jsonl", start)
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self.tb = None
        self.bar = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides earlier events of steps >= start (a killed run's last steps)
                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start)
            except ImportError:  # tensorboard is optional
                self.tb = None
        if enabled and progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self.file is not None
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, int | float):
                    self.tb.add_scalar(key.replace(".", "/"), value, row["step"])
        if self.bar is not None and "loss" in row:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the complete metric lines of steps ``<= step``, the run's resume point: a run killed after its
    last checkpoint logged steps that the resumed run logs again, and may have left half a line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(row, dict) and row.get("step", step + 1) <= step:
            kept.append(line)
    atomic_write(path, lambda f: f.write("".join(kept).encode()))


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


def _batches(loader: Any, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor | None]]:
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
    amp_dtype = _autocast_dtype(cfg.precision, device)
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

    data = build_data(cfg, info, device)
    views = build_views(cfg, data)
    model = build_model(cfg, data.channels, data.channels_b)
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

    ddp_model: nn.Module = model
    if info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(ddp_model) if cfg.compile else ddp_model

    logger = _Logger(run_dir, info.is_main, cfg.progress, last_step, step)
    generator = _view_generator(device)
    window = torch.zeros(len(TERMS), device=device, dtype=torch.float64)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    bad_terms = torch.zeros(len(TERMS), device=device, dtype=torch.bool)
    window_steps, window_start = 0, time.perf_counter()
    metrics: dict[str, float] = {}
    interrupted = False
    model.train()

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
            }
            if hasattr(views, "mean"):  # image views: the normalisation evaluation must apply
                state["normalize"] = {"mean": list(views.mean), "std": list(views.std)}
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
                v_a, v_b = views(images, generator=generator)
                if cfg.channels_last:
                    v_a = v_a.contiguous(memory_format=torch.channels_last)
                    v_b = v_b.contiguous(memory_format=torch.channels_last)
                set_lr(
                    optimizer,
                    warmup_cosine(step, schedule_steps, warmup_steps, peak_lr, cfg.optim.final_lr_ratio),
                )
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    if probe is not None:
                        probe.arm()
                    z_a, z_b = forward(v_a, v_b)
                if objective is not None:
                    out = objective(z_a, z_b)
                else:
                    out = vicreg_loss(
                        z_a,
                        z_b,
                        sim_coeff=cfg.loss.sim_coeff,
                        std_coeff=cfg.loss.std_coeff,
                        cov_coeff=cfg.loss.cov_coeff,
                        gamma=cfg.loss.gamma,
                        eps=cfg.loss.eps,
                        gather=cfg.loss.gather,
                        check_finite=False,
                    )
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
                if step % steps_per_epoch == 0 and cfg.knn_every and (step // steps_per_epoch) % cfg.knn_every == 0:
                    acc = _knn_monitor(model, data, device, amp_dtype)
                    if acc is not None:
                        logger.log({"step": step, "epoch": step // steps_per_epoch, **acc})
                        metrics.update(acc)
                        model.train()
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


def _knn_monitor(model: VICReg, data: _Data, device: torch.device, amp_dtype: torch.dtype | None) -> dict | None:
    """kNN top-1 (k = 20) of the current representation on the held-out split, on a subset for speed."""
    if data.eval_train is None or data.eval_test is None:
        return None
    if not hasattr(data.eval_train, "images"):  # signals / tables
        from vicreg.modalities import knn_monitor_arrays

        return knn_monitor_arrays(model, data, device, amp_dtype)
    from vicreg.evaluate import extract_features, knn_accuracy

    model.eval()
    g = torch.Generator().manual_seed(0)
    if data.eval_train is data.eval_test:  # no test split: queries and neighbours are disjoint training images
        perm = torch.randperm(len(data.eval_train), generator=g)
        n_test = min(2_000, max(1, len(perm) // 5))
        test_idx, train_idx = perm[:n_test], perm[n_test : n_test + 10_000]
    else:
        n_train = min(len(data.eval_train), 10_000)
        n_test = min(len(data.eval_test), 2_000)
        train_idx = torch.randperm(len(data.eval_train), generator=g)[:n_train]
        test_idx = torch.randperm(len(data.eval_test), generator=g)[:n_test]
    kwargs: dict[str, Any] = {"device": device, "mean": data.mean, "std": data.std, "autocast_dtype": amp_dtype}
    train_images = data.eval_train.images[train_idx.to(data.eval_train.images.device)]
    test_images = data.eval_test.images[test_idx.to(data.eval_test.images.device)]
    f_train = extract_features(model.embed, train_images, **kwargs)
    f_test = extract_features(model.embed, test_images, **kwargs)
    acc = knn_accuracy(
        f_train,
        data.eval_train.labels[train_idx.to(data.eval_train.labels.device)].cpu(),
        f_test,
        data.eval_test.labels[test_idx.to(data.eval_test.labels.device)].cpu(),
        k=20,
    )
    return {f"knn.{k}": v for k, v in acc.items()}


def _write_config(run_dir: Path, cfg: TrainConfig) -> None:
    import yaml

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
