"""`vicreg eval`'s parts on Fashion-MNIST, before and after: feature extraction, kNN, probes; old vs new side by side.

* feature extraction: ``extract_features`` with the ``fashion-mnist-cpu`` preset's encoder (random weights; built as
  benchmarks/train.py does) over train + test, against the encoder's bare forward rate (``model.embed`` on a
  normalised batch of 512); eval extracts twice (trained encoder and random init);
* kNN (``knn_evaluate``, k = 20 and 200; unchanged) per feature set;
* probes per feature set: the old code (``linear_probe`` of ``--before``, default ``main``, read from git: SGD, one
  call for 100% and one per label fraction) against ``probe_suite`` (this tree: L-BFGS), alternating, medians.

Feature sets: the encoder's 256-d features and the normalised pixels (784-d). The estimated eval total is
2 x extraction + kNN and probes of two 256-d sets and one 784-d set, before and after.

    PYTHONPATH=src python benchmarks/eval_parts.py [--repeats 1] [--before main]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train import ceiling_rate
from vicreg.build import model_from_config
from vicreg.config import PRESETS
from vicreg.data import load
from vicreg.probes import balanced_subset, extract_features, knn_evaluate, probe_suite, raw_features


def _old_linear(rev: str) -> Any:
    text = subprocess.run(
        ["git", "show", f"{rev}:src/vicreg/probes/linear.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_linear.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_linear", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_linear"] = module
    spec.loader.exec_module(module)
    return module


def _old_suite(old: Any, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> dict[str, Any]:
    """What eval.evaluate_features did: one linear_probe for all labels and one per fraction."""
    out: dict[str, Any] = {"linear": old.linear_probe(x, y, xt, yt, num_classes=10).as_dict(), "semi": {}}
    for fraction in (0.01, 0.1):
        idx = balanced_subset(y, fraction, seed=0)
        res = old.linear_probe(x[idx], y[idx], xt, yt, num_classes=10)
        out["semi"][f"{100 * fraction:g}%"] = {"labels": int(idx.numel()), **res.as_dict()}
    return out


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds of old and new probes")
    parser.add_argument("--before", default="main", help="git revision of the old probes")
    args = parser.parse_args()
    cfg = PRESETS["fashion-mnist-cpu"]
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M}, `{' '.join(['python', *sys.argv])}`")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    print(f"# reference: fashion-mnist-cpu fwd+bwd {ceiling_rate(cfg, 1, 4, backbone_only=False):.0f} img/s")
    train, test = load("fashion-mnist", "train", download=False), load("fashion-mnist", "test", download=False)
    assert train.labels is not None and test.labels is not None
    y, yt = train.labels, test.labels
    torch.manual_seed(0)
    model = model_from_config(cfg, 1).eval()
    batch = torch.randn(512, 1, 28, 28)
    with torch.no_grad():
        model.embed(batch)
        bare = statistics.median(_timed(lambda: model.embed(batch))[0] for _ in range(5))
    t_feat, f_train = _timed(lambda: extract_features(model.embed, train.images, mean=train.mean, std=train.std))
    f_test = extract_features(model.embed, test.images, mean=train.mean, std=train.std)
    n = train.images.shape[0] + test.images.shape[0]
    t_feat *= n / train.images.shape[0]
    print(
        f"feature extraction, one encoder, {n} images: {t_feat:.1f} s ({n / t_feat:.0f} img/s; bare forward "
        f"{512 / bare:.0f} img/s, ratio {(n / t_feat) / (512 / bare):.2f})"
    )
    sets = {
        "encoder 256-d": (f_train, f_test),
        "pixels 784-d": (
            raw_features(train.images, train.mean, train.std),
            raw_features(test.images, train.mean, train.std),
        ),
    }
    old = _old_linear(args.before)
    parts: dict[str, dict[str, float]] = {}
    for name, (x, xt) in sets.items():
        t_knn, knn = _timed(lambda: knn_evaluate(x, y, xt, yt, ks=(20, 200)))  # noqa: B023 (called at once)
        times: dict[str, list[float]] = {"old": [], "new": []}
        results: dict[str, Any] = {}
        for _ in range(args.repeats):
            for which, call in (
                ("old", lambda x=x, xt=xt: _old_suite(old, x, y, xt, yt)),
                ("new", lambda x=x, xt=xt: probe_suite(x, y, xt, yt, num_classes=10)),
            ):
                dt, results[which] = _timed(call)
                times[which].append(dt)
        med = {k: statistics.median(v) for k, v in times.items()}
        parts[name] = {"knn": t_knn, **med}
        print(f"\n{name}: kNN {t_knn:.1f} s (top-1 k=20 {knn['k20']['top1']:.2f}, k=200 {knn['k200']['top1']:.2f})")
        print(f"  probes old (SGD) {med['old']:.1f} s, new (L-BFGS) {med['new']:.1f} s, {med['old'] / med['new']:.1f}x")
        for key in ("linear", "10%", "1%"):
            o = results["old"]["linear"] if key == "linear" else results["old"]["semi"][key]
            w = results["new"]["linear"] if key == "linear" else results["new"]["semi"][key]
            print(
                f"  {key:>6}: last top-1 old {o['last_top1']:.2f} new {w['last_top1']:.2f} "
                f"(diff {w['last_top1'] - o['last_top1']:+.2f}); best old {o['best_top1']:.2f} new {w['best_top1']:.2f}"
            )
    enc, pix = parts["encoder 256-d"], parts["pixels 784-d"]
    for which in ("old", "new"):
        rest = 2 * (enc["knn"] + enc[which]) + pix["knn"] + pix[which]
        print(
            f"\neval estimate {which}: extraction 2 x {t_feat:.1f} s + kNN/probes {rest:.1f} s = "
            f"{2 * t_feat + rest:.1f} s, total / extraction {(2 * t_feat + rest) / (2 * t_feat):.2f}"
        )


if __name__ == "__main__":
    main()
