"""Images per second of the two-view VICReg augmentation, ours against the usual ways of doing it.

Compared in one run, on the same cores, for each image size:

* ``vicreg``: ``ImageViews(size)(x)`` on a uint8 batch (this library, public API only);
* ``kornia``: kornia's batched augmentation with the same operations, one pipeline per view, on the same
  batch converted to float (kornia needs float input);
* ``pil``: the official per-image pipeline (torchvision transforms on PIL images, PIL blur and solarize,
  ``ToTensor`` and ``Normalize``) in this process, image after image, as the official code, lightly and
  solo-learn run it inside each DataLoader worker;
* ``pil-2proc`` (with ``--workers 2``): the same in a DataLoader with 2 worker processes, i.e. on both cores.

The input images are already decoded and have the output size (a CIFAR-like 32 px, STL-like 96 px and a
224 px batch); decoding is not measured. Every rep runs every method once, interleaved, and the table reports
medians, so the ratios compare methods under the same load.

    PYTHONPATH=src python benchmarks/views.py                      # sizes 32 96 224
    PYTHONPATH=src python benchmarks/views.py --sizes 32 --reps 7 --workers 2
    PYTHONPATH=src python benchmarks/views.py --device cuda --batch 1024 512 256   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from vicreg import ImageViews

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _PilBlur:
    """The official GaussianBlur: PIL's blur with sigma uniform in [0.1, 2], with probability p."""

    def __init__(self, p: float) -> None:
        self.p, self.rng = p, np.random.default_rng()

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.rng.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(self.rng.random() * 1.9 + 0.1))
        return img


class _PilSolarize:
    """The official Solarization: PIL's solarize (pixels >= 128 inverted), with probability p."""

    def __init__(self, p: float) -> None:
        self.p, self.rng = p, np.random.default_rng()

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if self.rng.random() < self.p else img


def pil_pipeline(size: int, blur_p: float, solarize_p: float) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            _PilBlur(blur_p),
            _PilSolarize(solarize_p),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


class _PilPairs(torch.utils.data.Dataset):
    def __init__(self, images: list[Image.Image], size: int) -> None:
        self.images = images
        self.view_a, self.view_b = pil_pipeline(size, 1.0, 0.0), pil_pipeline(size, 0.1, 0.2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view_a(self.images[i]), self.view_b(self.images[i])


def kornia_pipelines(size: int, kernel_size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    import kornia.augmentation as K

    def view(blur_p: float, solarize_p: float) -> torch.nn.Module:
        return torch.nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
            K.RandomHorizontalFlip(p=0.5),
            K.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((kernel_size, kernel_size), (0.1, 2.0), p=blur_p),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p),
            K.Normalize(torch.tensor(MEAN), torch.tensor(STD)),
        )

    return view(1.0, 0.0), view(0.1, 0.2)


def methods(size: int, n: int, workers: int, device: str = "cpu") -> dict[str, Callable[[], object]]:
    """The timed callables; ``vicreg`` and ``kornia`` run on ``device``, PIL on the CPU (as in a DataLoader)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]
    views = ImageViews(size)
    pairs = _PilPairs(images, size)
    x_dev = x.to(device)

    def pil() -> object:
        out = [pairs[i] for i in range(n)]
        return torch.stack([a for a, _ in out]), torch.stack([b for _, b in out])

    found: dict[str, Callable[[], object]] = {"vicreg": lambda: views(x_dev)}
    try:
        kornia_a, kornia_b = (m.to(device) for m in kornia_pipelines(size, views.blur_kernel_size))

        def kornia() -> object:
            xf = x_dev.float().div_(255)
            return kornia_a(xf), kornia_b(xf)

        found["kornia"] = kornia
    except ImportError:
        print("(kornia is not installed: pip install kornia to compare with it)")
    found["pil"] = pil
    if workers > 0:
        # Several batches per worker, so that all workers are busy; one pass over the n images.
        batch = max(1, n // (4 * workers))
        loader = torch.utils.data.DataLoader(pairs, batch, num_workers=workers, persistent_workers=True)
        found[f"pil-{workers}proc"] = lambda: list(loader)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96, 224])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 128, 32], help="batch per size")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="also time PIL in a DataLoader with N workers")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="where vicreg and kornia run (cpu, cuda); PIL stays on CPU")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or leave --device at cpu")
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    batches = dict(zip(args.sizes, args.batch + [args.batch[-1]] * len(args.sizes), strict=False))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, device {args.device}")
    print("| size | batch | method | median images/s (two views each) | vicreg speed-up |")
    print("|---:|---:|---|---:|---:|")
    for size in args.sizes:
        n = batches[size]
        timed = methods(size, n, args.workers, args.device)
        seconds: dict[str, list[float]] = {name: [] for name in timed}
        for fn in timed.values():  # warm-up (and DataLoader worker start, CUDA kernels' first launch)
            fn()
        sync()
        for _ in range(args.reps):
            for name, fn in timed.items():
                start = time.perf_counter()
                fn()
                sync()
                seconds[name].append(time.perf_counter() - start)
        rate = {name: n / statistics.median(s) for name, s in seconds.items()}
        for name, r in rate.items():
            print(f"| {size} | {n} | {name} | {r:,.0f} | {rate['vicreg'] / r:.1f}x |")


if __name__ == "__main__":
    main()
