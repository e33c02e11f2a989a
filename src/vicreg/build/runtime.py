"""Runtime: the process group, the device and the autocast dtype a run works with."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from vicreg.distributed import DistInfo, get_dist_info

__all__ = ["autocast_dtype", "resolve_device", "setup_distributed"]


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


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` (this process's GPU, else MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    info = info or get_dist_info()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``fp32``: none) on ``device``; fp16 needs CUDA (its gradient scaler)."""
    if precision == "fp32":
        return None
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (it uses a gradient scaler); use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16
