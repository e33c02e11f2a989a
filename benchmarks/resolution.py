"""kNN of a Fashion-MNIST run's encoder with the evaluation images resized to other sizes (FixRes-style).

Random-resized-crop training enlarges objects (a crop of 60% of the image is drawn at full size), so the
encoder may see test images best somewhat larger than it was trained on. This measures it; the quality
benchmark itself keeps evaluating at the training size.

    python benchmarks/resolution.py runs/quality --sizes 28 32 36 40 44
    python benchmarks/resolution.py runs/quality --sizes 28 --k 10 --standardize
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vicreg.build import load_encoder
from vicreg.data import load, resize_images
from vicreg.probes import extract_features, knn_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder or checkpoint trained on fashion-mnist")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 32, 36, 40, 44])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument(
        "--standardize", action="store_true", help="also report kNN on features standardised with train mean/std"
    )
    args = parser.parse_args()

    enc = load_encoder(args.run)
    train, test = load("fashion-mnist", "train"), load("fashion-mnist", "test")
    for size in args.sizes:
        with torch.no_grad():
            f_train, f_test = (
                extract_features(enc.model.embed, resize_images(d.images, size), mean=enc.mean, std=enc.std)
                for d in (train, test)
            )
        top1 = knn_accuracy(f_train, train.labels, f_test, test.labels, k=args.k)["top1"]
        line = f"{size:3d} px: kNN k={args.k} {top1:.2f}"
        if args.standardize:
            mean, std = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
            z_train, z_test = (f_train - mean) / std, (f_test - mean) / std
            line += f"  standardised {knn_accuracy(z_train, train.labels, z_test, test.labels, k=args.k)['top1']:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
