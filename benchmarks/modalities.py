"""VICReg beyond images: kNN and linear-probe accuracy of a VICReg encoder vs raw features vs a random encoder.

For each dataset (a time-series set bundled with aeon, a table bundled with scikit-learn) and its preset:

* raw: the standardised input (a signal flattened over channels and time);
* random: the preset's encoder at its random initialisation (the same seed as the pretraining run);
* vicreg: that encoder after ``vicreg.train.train`` of the preset (fixed small CPU budget).

Each representation is scored by kNN (k = 20, cosine, temperature-weighted; ``vicreg.probes.knn_accuracy``) and
by a logistic-regression probe (scikit-learn, features standardised on the training split), training split ->
test split. Pretraining sees the training split without labels.

    PYTHONPATH=src python benchmarks/modalities.py [--only gunpoint-resnet1d] [--epochs N] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vicreg.checkpoint import read_backbone_state
from vicreg.config import PRESETS, TrainConfig
from vicreg.data import FloatDataset, load_float_rows
from vicreg.models import build_backbone
from vicreg.probes import extract_features, knn_accuracy
from vicreg.train import train

BENCH = ("gunpoint-resnet1d", "wine-mlp", "breast-cancer-mlp")


def _encoder(cfg: TrainConfig, channels: int) -> torch.nn.Module:
    m = cfg.model
    kwargs = {"width": m.width} | ({"depth": m.depth} if m.backbone == "mlp" else {})
    return build_backbone(m.backbone, in_channels=channels, **kwargs)


def _scores(f_train: torch.Tensor, y_train: torch.Tensor, f_test: torch.Tensor, y_test: torch.Tensor) -> tuple:
    knn = knn_accuracy(f_train, y_train, f_test, y_test, k=20)["top1"]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0))
    probe.fit(f_train.numpy(), y_train.numpy())
    linear = 100.0 * float((probe.predict(f_test.numpy()) == y_test.numpy()).mean())
    return knn, linear


def _features(encoder: torch.nn.Module, train_set: FloatDataset, data: FloatDataset) -> torch.Tensor:
    encoder.eval()
    return extract_features(encoder, data.x, mean=train_set.mean, std=train_set.std)


def run(name: str, seed: int, epochs: int | None, workdir: Path) -> dict[str, tuple[float, float] | float]:
    cfg: TrainConfig = PRESETS[name]
    kind = "signal" if cfg.modality == "signal" else "table"
    train_set = load_float_rows(cfg.data, "train", kind=kind)
    test_set = load_float_rows(cfg.data, "test", kind=kind)
    assert train_set.labels is not None and test_set.labels is not None
    y_train, y_test = train_set.labels, test_set.labels
    cfg = replace(cfg, out=workdir / f"{name}-{seed}", seed=seed, progress=False, knn_every=0)
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)

    def standard(d: FloatDataset) -> torch.Tensor:
        return extract_features(torch.nn.Flatten(), d.x, mean=train_set.mean, std=train_set.std)

    out: dict[str, tuple[float, float] | float] = {
        "raw": _scores(standard(train_set), y_train, standard(test_set), y_test)
    }
    torch.manual_seed(seed)  # train() seeds the same way before it builds the model
    random_encoder = _encoder(cfg, train_set.channels)
    out["random"] = _scores(
        _features(random_encoder, train_set, train_set), y_train, _features(random_encoder, train_set, test_set), y_test
    )
    start = time.perf_counter()
    result = train(cfg)
    out["train_s"] = time.perf_counter() - start
    encoder = _encoder(cfg, train_set.channels)
    encoder.load_state_dict(read_backbone_state(result.run_dir / "backbone.safetensors"), strict=True)
    out["vicreg"] = _scores(
        _features(encoder, train_set, train_set), y_train, _features(encoder, train_set, test_set), y_test
    )
    out["steps"] = float(result.step)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(BENCH), choices=BENCH)
    parser.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            runs = [run(name, seed, args.epochs, Path(tmp)) for seed in args.seeds]
            cfg = PRESETS[name]
            epochs = cfg.epochs if args.epochs is None else args.epochs
            print(
                f"\n{name}: data {cfg.data}, {cfg.model.backbone} width {cfg.model.width}, {epochs} epochs, "
                f"{int(runs[0]['steps'])} steps, training {statistics.median(r['train_s'] for r in runs):.0f} s "
                f"(median of {len(runs)} seeds)"
            )
            print(f"  {'features':<8} {'kNN top-1 %':>24} {'linear top-1 %':>24}")
            for key in ("raw", "random", "vicreg"):
                knn = [r[key][0] for r in runs]
                lin = [r[key][1] for r in runs]
                print(
                    f"  {key:<8} {statistics.median(knn):>8.1f} [{min(knn):5.1f}, {max(knn):5.1f}]"
                    f"   {statistics.median(lin):>8.1f} [{min(lin):5.1f}, {max(lin):5.1f}]"
                )


if __name__ == "__main__":
    main()
