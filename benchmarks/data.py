"""Images per second of the two data paths, each next to the usual way of doing the same job.

* In memory (CIFAR-10-shaped uint8 tensor): ``InMemoryLoader`` (one row gather per batch) vs a
  ``DataLoader`` over a ``TensorDataset`` (per-sample indexing and collation), both in the main process, and
  torch's ``index_select`` per batch; with torch's default thread count and with one thread.
* A folder of JPEGs (ImageNet-like 500x375 photos): ``folder_loader`` (PIL with JPEG DCT scaling, resize of
  the shorter side + centre crop) vs torchvision's ``ImageFolder`` with ``Resize + CenterCrop + PILToTensor``,
  same DataLoader workers and batch size, the same resize rule.

Medians over repeats of a full pass, measured side by side in one run.

    python benchmarks/data.py [--images 1000] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

from vicreg.data import ImageDataset, InMemoryLoader, folder_loader


def one_pass(batches: Iterable) -> float:
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += batch[0].shape[0]
    return count / (time.perf_counter() - start)


def compare(makers: dict[str, Callable[[], Iterable]], repeats: int) -> dict[str, float]:
    """Median images/s of each contender, the passes interleaved so that machine noise hits all alike."""
    rates: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(repeats):
        for name, make in makers.items():
            rates[name].append(one_pass(make()))
    return {name: statistics.median(r) for name, r in rates.items()}


def torch_index_select(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterable:
    """Batches by torch's own ``index_select`` on a shuffled order (what InMemoryLoader avoids on the CPU)."""
    order = torch.randperm(images.shape[0])
    for start in range(0, images.shape[0] - batch_size + 1, batch_size):
        sel = order[start : start + batch_size]
        yield images.index_select(0, sel), labels.index_select(0, sel)


def photo_like_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    """Smooth random pictures with some texture, 500x375 (the median ImageNet size), JPEG quality 90."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        a = np.asarray(low, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3), dtype=np.int16)
        sub = folder / f"class{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(sub / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="JPEG files in the folder benchmark")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the folder benchmark")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )

    # In memory: CIFAR-10's shape. Measured with torch's default thread count and with one thread: on a
    # loaded machine, a parallel copy of one batch can wait milliseconds for a busy core.
    n = 50_000
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    ours = InMemoryLoader(ImageDataset(images, labels), args.batch_size, seed=0, rank=0, world_size=1)
    usual = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True, drop_last=True)
    default_threads = torch.get_num_threads()
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        rate = compare(
            {
                "InMemoryLoader": lambda: ours,
                "DataLoader(TensorDataset)": lambda: usual,
                "torch index_select per batch": lambda: torch_index_select(images, labels, args.batch_size),
            },
            args.repeats,
        )
        print(f"\nin memory, 50000 x 3 x 32 x 32 uint8, batch {args.batch_size}, {threads} torch thread(s)")
        for name, value in rate.items():
            print(f"  {name:<29}{value:12,.0f} images/s")
        ratio = rate["InMemoryLoader"] / rate["DataLoader(TensorDataset)"]
        print(f"  {'InMemoryLoader / DataLoader':<29}{ratio:12.1f} x")
    torch.set_num_threads(default_threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photo_like_jpegs(root, args.images)
        batch = min(args.batch_size, 64)
        for size in (224, 96):
            ours_f = folder_loader(
                root,
                size,
                batch,
                num_workers=args.workers,
                seed=0,
                rank=0,
                world_size=1,
                drop_last=False,
                pin_memory=False,
            )
            tv = torchvision.datasets.ImageFolder(
                str(root),
                transform=transforms.Compose(
                    [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
                ),
            )
            usual_f = DataLoader(tv, batch_size=batch, shuffle=True, num_workers=args.workers, persistent_workers=True)
            next(iter(ours_f)), next(iter(usual_f))  # start the workers before timing
            makers = {"folder_loader": lambda o=ours_f: o, "ImageFolder+Resize+Crop": lambda u=usual_f: u}
            rate = compare(makers, args.repeats)
            print(
                f"\nfolder of {args.images} JPEGs 500x375 -> uint8 {size}x{size}, batch {batch}, {args.workers} workers"
            )
            for name, value in rate.items():
                print(f"  {name:<29}{value:12,.0f} images/s")
            print(f"  {'ratio':<29}{rate['folder_loader'] / rate['ImageFolder+Resize+Crop']:12.1f} x")


if __name__ == "__main__":
    main()
