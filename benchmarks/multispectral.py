"""Does a C-band encoder use the bands an RGB encoder cannot see? A synthetic multispectral check.

Data (made here, seeded): 13-band ``uint16`` tiles of 32 px, 4 classes. The three "visible" bands (0, 1, 2)
hold a random texture whose statistics do not depend on the class; the class is written only into two
"infrared" bands (7 and 8): a horizontal, vertical or diagonal stripe pattern, or none, in 16-bit values far above
255. Every band gets sensor noise. So an encoder that sees only the visible bands cannot do better than chance
(25%), and one that sees all 13 can, if VICReg learns the pattern without labels.

Two runs, trained the same way (``vicreg.train.train`` on the same tiles, same seed, same steps, small_cnn,
band views with the multispectral recipe): one on all 13 bands, one on the same tiles restricted to the visible
bands ``(0, 1, 2)`` (still 16-bit: the same views, statistics and normalisation). Each encoder is scored on a
separate test split by kNN (k = 20, cosine; :func:`vicreg.probes.knn_accuracy`) and a logistic-regression
probe on standardised features.

    PYTHONPATH=src python benchmarks/multispectral.py [--steps 150] [--seeds 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from train import ceiling_rate  # benchmarks/train.py (this folder is on sys.path when run as a script)
from vicreg.augment.bands import BandViewsConfig
from vicreg.build import load_encoder
from vicreg.config import PRESETS, ModelConfig, OptimConfig, TrainConfig
from vicreg.data.bands import read_band_arrays
from vicreg.probes import extract_features, knn_accuracy
from vicreg.train import train as pretrain

BANDS, CLASSES, SIDE = 13, 4, 32
VISIBLE = (0, 1, 2)
INFRARED = (7, 8)


def make_tiles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` tiles ``(n, 13, 32, 32)`` uint16 and their labels (see the module doc)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    x = rng.normal(20000, 1500, (n, BANDS, SIDE, SIDE))  # every band: a level plus sensor noise
    texture = rng.normal(0, 6000, (n, 1, SIDE // 4, SIDE // 4)).repeat(4, 2).repeat(4, 3)
    x[:, list(VISIBLE)] += texture * rng.uniform(0.5, 1.5, (n, len(VISIBLE), 1, 1))  # class-free visible texture
    yy, xx = np.mgrid[:SIDE, :SIDE]
    period = rng.integers(4, 9, n)[:, None, None]
    phase = rng.integers(0, 8, n)[:, None, None]
    patterns = [
        np.zeros((n, SIDE, SIDE)),
        ((yy[None] + phase) // (period // 2)) % 2,
        ((xx[None] + phase) // (period // 2)) % 2,
        ((xx[None] + yy[None] + phase) // (period // 2)) % 2,
    ]
    stripes = np.choose(labels[:, None, None], patterns)
    for b in INFRARED:
        x[:, b] += 25000 * stripes  # up to ~45000: 16-bit values, far above 255
    return np.clip(x, 0, 65535).astype(np.uint16), labels


def _config(data: Path, out: Path, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(
        out=out, data=str(data), device="cpu", seed=seed, batch_size=64, epochs=1000, max_steps=steps,
        log_every=50, ckpt_every=10_000, knn_every=0, progress=False,
        band_views=BandViewsConfig(recipe="multispectral", size=SIDE),
        model=ModelConfig(backbone="small_cnn", expander="512-512-512", width=16),
        optim=OptimConfig(name="adamw", base_lr=2e-3, weight_decay=1e-4, warmup_epochs=1.0),
    )  # fmt: skip


def _scores(run: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> tuple:
    enc = load_encoder(run)
    feats = [
        extract_features(enc.model.embed, torch.from_numpy(x), mean=enc.mean, std=enc.std) for x in (x_train, x_test)
    ]
    yt, ys = torch.from_numpy(y_train), torch.from_numpy(y_test)
    knn = knn_accuracy(feats[0], yt, feats[1], ys, k=20)["top1"]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    probe.fit(feats[0].numpy(), y_train)
    linear = 100.0 * float((probe.predict(feats[1].numpy()) == y_test).mean())
    return knn, linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps of each encoder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--n-test", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rate = statistics.median(ceiling_rate(PRESETS["fashion-mnist-cpu"], 1, 4, backbone_only=False) for _ in range(3))
    print(f"# reference: the fashion-mnist-cpu preset's bare forward+backward runs at {rate:.0f} images/s (CPU)")
    results: dict[str, list[tuple[float, float]]] = {"13 bands": [], "RGB only (bands 0-2)": []}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            x_train, y_train = make_tiles(args.n_train, 100 + seed)
            x_test, y_test = make_tiles(args.n_test, 200 + seed)
            for name, bands in (("13 bands", list(range(BANDS))), ("RGB only (bands 0-2)", list(VISIBLE))):
                data = root / f"{seed}-{len(bands)}.npz"
                np.savez(data, images=x_train[:, bands], labels=y_train)
                assert read_band_arrays(data).channels == len(bands)
                out = root / f"run-{seed}-{len(bands)}"
                pretrain(_config(data, out, args.steps, seed))
                results[name].append(_scores(out, x_train[:, bands], y_train, x_test[:, bands], y_test))
                print(f"seed {seed} {name}: kNN {results[name][-1][0]:.1f}%, linear {results[name][-1][1]:.1f}%")
    print(f"\n{args.steps} steps of batch 64 per encoder, {len(args.seeds)} seed(s), {time.monotonic() - began:.0f} s")
    print("| encoder input | kNN top-1 % | linear top-1 % |\n|---|---:|---:|")
    for name, rows in results.items():
        knn = statistics.mean(r[0] for r in rows)
        lin = statistics.mean(r[1] for r in rows)
        print(f"| {name} | {knn:.1f} | {lin:.1f} |")
    print("chance: 25.0%")


if __name__ == "__main__":
    main()
