"""Fashion-MNIST quality of the `fashion-mnist-cpu` preset after a fixed wall-clock pretraining budget.

1. Pretrain with `--budget-minutes` (the training loop's own budget, `vicreg.train`): it times the first steps,
   one kNN monitor call and one checkpoint, then fixes the number of steps that fits the budget, so the cosine
   schedule ends on time.
2. `vicreg.eval.run_eval` on the full train/test split: kNN (k = 20, cosine, temperature-weighted) and the
   linear probe, with the raw-pixel and random-init baselines of the same run. It also prints the kNN of the
   un-normalised pixels in [0, 1] (84.6), the reference the targets were set against; the `pixels` baseline of
   `run_eval` is the normalised input, which scores 85.7.

    python benchmarks/quality.py                         # 10-minute budget, runs/quality
    python benchmarks/quality.py --budget-minutes 5 --set optim.base_lr=0.5 --set views.crop_scale_min=0.3

Each ``--set key=value`` overrides the preset (YAML values, dotted keys), so tuning runs are recorded with the
exact settings they used. Tuning runs fix the length instead of the budget and use the quick evaluation
(`_quick_eval.py`: kNN + scikit-learn logistic regression, about a minute):

    python benchmarks/quality.py --epochs 3 --eval quick --set views.crop_scale_min=0.4
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from vicreg.config import PRESETS, merge
from vicreg.eval import EvalArgs, EvalSettings, run_eval
from vicreg.probes import format_table
from vicreg.train import train

TRAIN_IMAGES = 60_000


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the preset")
    parser.add_argument("--epochs", type=int, default=0, help="fixed length instead of the budget")
    parser.add_argument("--eval", choices=("full", "quick"), default="full", help="run_eval or _quick_eval")
    args = parser.parse_args()

    cfg = merge(PRESETS["fashion-mnist-cpu"], _overrides(args.set))
    length: dict[str, Any] = {"epochs": args.epochs} if args.epochs else {"budget_minutes": args.budget_minutes}
    cfg = replace(cfg, out=args.out, knn_every=0, progress=False, **length)
    t0 = time.perf_counter()
    result = train(cfg)
    minutes = (time.perf_counter() - t0) / 60
    epochs = round(result.step / (TRAIN_IMAGES // cfg.batch_size), 2)
    if args.eval == "quick":
        from _quick_eval import quick_eval

        quick = quick_eval(args.out)
        print(f"pretraining took {minutes:.1f} minutes ({epochs} epochs); settings: {args.set or 'preset'}")
        print(f"kNN k=20 {quick['knn_top1']:.2f}  linear (logistic regression) {quick['linear_top1']:.2f}")
        print(json.dumps({"settings": args.set, "epochs": epochs, "minutes": minutes, **quick}))
        return
    report = run_eval(args.out, EvalArgs(data="fashion-mnist", protocol=EvalSettings(k=(20,), fractions=())))
    print(f"pretraining took {minutes:.1f} minutes ({epochs} epochs); settings: {args.set or 'preset'}")
    print(format_table(report))
    r = report["results"]
    for name in ("vicreg", "random_init", "pixels"):
        knn, linear = r[name]["knn"]["k20"]["top1"], r[name]["linear"]["last_top1"]
        print(f"{name}: kNN k=20 {knn:.2f}  linear (last) {linear:.2f}")
    print(f"pixels in [0, 1], not normalised: kNN k=20 {_raw_pixel_knn():.2f}")


def _raw_pixel_knn() -> float:
    """kNN of the un-normalised pixels, the reference the quality targets were set against (84.6)."""
    from vicreg.data import load
    from vicreg.probes import knn_accuracy

    train, test = load("fashion-mnist", "train"), load("fashion-mnist", "test")
    f_train, f_test = (d.images.flatten(1).float() / 255 for d in (train, test))
    return float(knn_accuracy(f_train, train.labels, f_test, test.labels, k=20)["top1"])


if __name__ == "__main__":
    main()
