"""Images per second of the multi-band views (``BandViews``) at 13 bands against 3, beside ``PaperViews``.

For each image size, on one raw batch (``uint16`` for ``BandViews``, ``uint8`` for ``PaperViews``), in rounds
that alternate the contenders so that load on a shared machine hits them alike:

* ``bands C=13``: the multispectral recipe (rotations, shared jitter, noise, band dropout) on 13 bands;
* ``bands C=3``: the same recipe on 3 bands;
* ``paper C=3``: :class:`vicreg.PaperViews` (the RGB paper recipe) on 3 ``uint8`` bands, for reference.

images/s counts input images turned into both views. The machine's speed is given by the reference rate of
``benchmarks/train.py`` (the fashion-mnist-cpu preset's bare forward+backward), printed first.

    PYTHONPATH=src python benchmarks/views_bands.py                        # batch 256, 32 and 64 px
    PYTHONPATH=src python benchmarks/views_bands.py --rounds 3 --reps 3
    PYTHONPATH=src python benchmarks/views_bands.py --device cuda --reps 20
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from train import ceiling_rate  # benchmarks/train.py (this folder is on sys.path when run as a script)
from vicreg import PaperViews
from vicreg.augment.bands import BandViews, BandViewsConfig, band_views
from vicreg.config import PRESETS
from vicreg.data.bands import band_stats


def _rate(fn: Callable[[], object], n: int, reps: int, device: torch.device) -> float:
    fn()  # warm-up (buffers, kernels)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def contenders(batch: int, size: int, device: torch.device) -> dict[str, Callable[[], object]]:
    gen = torch.Generator(device=device).manual_seed(0)
    out: dict[str, Callable[[], object]] = {}
    for c in (13, 3):
        x = (torch.rand(batch, c, size, size, device=device, generator=gen) * 4000).to(torch.uint16)
        views: BandViews = band_views(BandViewsConfig(recipe="multispectral", size=size), band_stats(x))
        out[f"bands C={c}"] = lambda views=views, x=x: views(x, gen)
    x8 = (torch.rand(batch, 3, size, size, device=device, generator=gen) * 255).to(torch.uint8)
    paper = PaperViews(size)
    out["paper C=3"] = lambda: paper(x8, gen)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per contender and round")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or leave --device at cpu")

    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {device}"
    rate = statistics.median(ceiling_rate(PRESETS["fashion-mnist-cpu"], 1, 4, backbone_only=False) for _ in range(3))
    print(f"# {machine}")
    print(f"# reference: the fashion-mnist-cpu preset's bare forward+backward runs at {rate:.0f} images/s (CPU)")
    print(f"# batch {args.batch}; medians over {args.rounds} rounds x {args.reps} calls; both views per image")
    print("| size | bands C=13 img/s | bands C=3 img/s | C=13 / C=3 | paper C=3 img/s | bands C=3 / paper |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        fns = contenders(args.batch, size, device)
        rates: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                rates[name].append(_rate(fn, args.batch, args.reps, device))
        med = {name: statistics.median(r) for name, r in rates.items()}
        b13, b3, paper = med["bands C=13"], med["bands C=3"], med["paper C=3"]
        print(f"| {size} | {b13:.0f} | {b3:.0f} | {b13 / b3:.2f} | {paper:.0f} | {b3 / paper:.2f} |", flush=True)


if __name__ == "__main__":
    main()
