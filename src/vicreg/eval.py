"""``vicreg eval``: kNN, linear probe and semi-supervised probes of a trained encoder, with baselines.

One call evaluates three feature sets on the same data with the same protocols:

* ``vicreg``: the trained backbone's representation (``model.embed``), frozen;
* ``random_init``: the same architecture freshly initialised (seed fixed), frozen;
* ``pixels``: the normalised input itself, flattened (pixels for images, the raw values for signals and tables).

The protocols are described in one place, :func:`eval_protocol`: eval.json records its text, ``vicreg eval``
prints it above the table and in its help, and the report shows it. Encoder features are cached under
``RUN/features/``. The result is written to ``eval.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from vicreg.build import (
    DataArgs,
    NoLabelsError,
    OpenRun,
    Split,
    autocast_dtype,
    encoder_features,
    label_free_sample,
    labelled_splits,
    measure_label_free,
    open_run_with,
    random_init_model,
    resolve_device,
)
from vicreg.files import atomic_write
from vicreg.probes.features import raw_features
from vicreg.probes.knn import knn_evaluate
from vicreg.probes.linear import probe_suite
from vicreg.progress import Progress

__all__ = ["EvalArgs", "EvalSettings", "encoder_features", "eval_protocol", "evaluate_features", "run_eval"]

#: Feature sets larger than this many floats are not evaluated as raw pixels (ImageNet-sized data).
MAX_PIXEL_ELEMENTS = 400_000_000


@dataclass(frozen=True)
class EvalSettings:
    """The protocol's settings; they are written into eval.json with the results."""

    k: tuple[int, ...] = (20, 200)
    """Neighbour counts of the kNN classifier."""
    temperature: float = 0.07
    """Temperature of the kNN votes."""
    probe_epochs: int = 100
    """Epochs of the label-fraction probes (SGD); the most L-BFGS iterations of the full linear probe."""
    probe_lr: float = 0.1
    """Peak learning rate of the label-fraction probes (cosine schedule to 0)."""
    probe_weight_decay: float = 1e-4
    """Weight decay of the probes."""
    probe_batch_size: int = 1024
    """Minibatch size of the probes."""
    fractions: tuple[float, ...] = (0.01, 0.1)
    """Label fractions of the semi-supervised probes."""
    seed: int = 0
    """Seed of the label subsets, the 80/20 split, the probes and the random-init baseline."""
    label_free_rows: int = 2000
    """Held-out rows of the label-free measures (the test split, else the seeded 20%; a seeded sample of them)."""
    label_free_copies: int = 8
    """Augmented copies (the training views) of each row for LiDAR."""
    label_free_lidar_rows: int = 1000
    """LiDAR uses the first this many rows of the sample (it encodes label_free_copies times as many)."""

    def __post_init__(self) -> None:
        if not self.k or min(self.k) < 1:
            raise ValueError(f"k must be positive neighbour counts, got {self.k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.probe_epochs < 1 or self.probe_batch_size < 1 or self.probe_lr <= 0 or self.probe_weight_decay < 0:
            raise ValueError("probe epochs and batch size must be >= 1, lr > 0, weight decay >= 0")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"label fractions must be in (0, 1], got {self.fractions}")
        if self.label_free_rows < 2 or self.label_free_lidar_rows < 2 or self.label_free_copies < 2:
            raise ValueError("label_free_rows, label_free_lidar_rows and label_free_copies must be >= 2")


@dataclass(frozen=True, kw_only=True)
class EvalArgs(DataArgs):
    """Evaluate a run folder or checkpoint: label-free measures, and with labels kNN, linear and label-fraction
    probes, with baselines.

    Label-free (always, no labels needed): RankMe, LiDAR and alpha-ReQ of the representation on a seeded sample
    of held-out rows, each beside the random-init encoder's on the same rows (vs_init: above 1, training earned
    rank; about 1, the encoder barely moved; below 1, collapse). Data without labels gets only these.

    Features of the frozen backbone (cached in RUN/features/), on labelled data: names and dataset folders use
    their own train/test splits, other data (a .npy/.npz file, an image folder) a seeded 80/20 split unless a
    test set is given. Baselines in the same run: a randomly initialised backbone of the same architecture, and
    the raw input. Writes RUN/eval.json (or --out) and prints a table.
    """

    test_data: str | None = None
    """A separate labelled test set (e.g. imagenet/val)."""
    out: Path | None = None
    """Where to write the results (default: RUN/eval.json)."""
    protocol: EvalSettings = field(default_factory=EvalSettings)
    """The protocol (written into eval.json)."""
    baselines: bool = True
    """Also evaluate a random-init backbone and the raw input."""
    cache: bool = True
    """Read/write features under RUN/features/."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of the feature extraction."""
    label_free: bool = True
    """Measure the label-free scores (RankMe, LiDAR, alpha-ReQ) on held-out rows."""


def eval_protocol(settings: EvalSettings, n_train: int | None = None, n_test: int | None = None) -> dict[str, str]:
    """The evaluation protocol in words, one entry per part (``features``, ``knn``, ``linear``, ``semi``,
    ``baselines``): the one description that eval.json records, ``vicreg eval`` prints and the report shows."""
    s = settings
    train = f"all {n_train} training rows" if n_train is not None else "all training rows"
    test = f"all {n_test} test rows" if n_test is not None else "all test rows"
    fractions = ", ".join(f"{100 * f:g}%" for f in s.fractions) or "none"
    return {
        "features": "backbone output (model.embed) in eval mode, frozen, on whole inputs normalised as in training "
        "(images of another size: shorter side resized to the training views' size, bilinear and antialiased, "
        "then centre-cropped)",
        "knn": f"k = {', '.join(map(str, s.k))}, cosine similarity of L2-normalised features, the k nearest vote "
        f"exp(sim / T) with T = {s.temperature:g} (InstDisc / DINO); {train} as neighbours, {test} as queries "
        "(the online kNN during training uses seeded subsets); accuracies in %",
        "linear": "multinomial logistic regression on standardised features (train statistics): mean cross-entropy "
        f"+ weight decay {s.probe_weight_decay:g} / 2 ||W||^2, solved full-batch with L-BFGS (strong Wolfe, history "
        f"10) in whitened coordinates, at most {s.probe_epochs} iterations; 'last' (after the final iteration) is the "
        "honest number, 'best' (the best iteration on the test set) peeks at the test set",
        "semi": f"the same objective on class-balanced seeded label fractions ({fractions}) of the training set "
        f"(standardised with the subset's statistics; linear on frozen features, not fine-tuning), minibatch SGD "
        f"momentum 0.9, lr {s.probe_lr:g} with a cosine schedule, batch {s.probe_batch_size}, {s.probe_epochs} "
        "epochs (the exact optimum overfits so few labels); tested on the whole test set",
        "baselines": "random_init: same architecture, seed-fixed fresh weights; pixels: the normalised input "
        "(pixels, series or table rows), flattened",
        "label_free": f"no labels: RankMe (Garrido et al. 2023) and alpha-ReQ (Agrawal et al. 2022) of the "
        f"representation of up to {s.label_free_rows} held-out rows (seed {s.seed}), LiDAR (Thilak et al. 2024) of "
        f"{s.label_free_copies} augmented copies (the run's training views) of the first {s.label_free_lidar_rows}; "
        "each also for the random-init encoder on the same rows and views, and their ratio (vs_init: above 1, "
        "training earned rank; about 1, it barely moved; below 1, collapse)",
    }


def evaluate_features(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    settings: EvalSettings,
    device: torch.device | str | None = None,
    stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """kNN, linear probe and label-fraction probes of one feature set (accuracies in %), on ``device``
    (default: where the features are; a GPU makes kNN on ImageNet-sized sets practical). ``stage`` is told each
    probe as it starts (``Progress.stage``)."""
    s = settings
    say = stage or (lambda _: None)
    if device is not None:
        train_f, train_y, test_f, test_y = (t.to(device) for t in (train_f, train_y, test_f, test_y))
    probe: dict[str, Any] = {
        "epochs": s.probe_epochs,
        "lr": s.probe_lr,
        "weight_decay": s.probe_weight_decay,
        "batch_size": s.probe_batch_size,
        "seed": s.seed,
    }
    classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    t0 = time.perf_counter()
    out: dict[str, Any] = {"feature_dim": int(train_f.shape[1])}
    say(f"  kNN (k = {', '.join(map(str, s.k))}): {len(test_f)} queries among {len(train_f)} rows")
    out["knn"] = knn_evaluate(train_f, train_y, test_f, test_y, ks=s.k, temperature=s.temperature)
    t1 = time.perf_counter()
    say(
        f"  linear probe: {len(train_f)} rows (L-BFGS, at most {s.probe_epochs} iterations); label fractions "
        f"{', '.join(f'{100 * f:g}%' for f in s.fractions) or 'none'} ({s.probe_epochs} SGD epochs each)"
    )
    out.update(probe_suite(train_f, train_y, test_f, test_y, fractions=s.fractions, num_classes=classes, **probe))
    out["seconds"] = {"knn": round(t1 - t0, 3), "probes": round(time.perf_counter() - t1, 3)}
    return out


def run_eval(
    run_or_checkpoint: str | os.PathLike[str], args: EvalArgs | None = None, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Evaluate a run folder or checkpoint as ``args`` say (default: the run's training data, the default
    protocol); write eval.json (``args.out``, default ``RUN/eval.json``) and return what was written.
    ``progress`` says what is being done (default: a :class:`~vicreg.progress.Progress` on stdout)."""
    args = args or EvalArgs()
    progress = progress or Progress()
    settings = args.protocol
    t_start = time.perf_counter()
    autocast_dtype(args.precision, resolve_device(args.device))  # reject a bad precision before any work
    progress.stage(f"loading the encoder of {run_or_checkpoint}")
    run = open_run_with(run_or_checkpoint, args)
    enc = run.encoder
    progress.stage(f"loading {run.source}")
    label_free = _label_free(run, args) if args.label_free else {}
    try:
        train_split, test_split, split_note = labelled_splits(
            run.kind, enc.spec, run.source, test_source=args.test_data, seed=settings.seed, download=args.download
        )
    except NoLabelsError as err:
        if args.test_data is not None:  # a labelled test set was asked for
            raise
        return _write(run, args, _unlabelled_report(run, args, label_free, str(err), t_start))
    train_set, test_set = train_split.data, test_split.data
    train_y, test_y = train_set.labels, test_set.labels
    assert train_y is not None and test_y is not None  # labelled_splits guarantees labels
    cache_dir = run.run_dir / "features" if args.cache else None
    kw: dict[str, Any] = {"cache_dir": cache_dir, "device": run.device, "batch_size": args.batch_size}
    kw.update(precision=args.precision, seed=settings.seed)

    feature_sets: dict[str, tuple[Tensor, Tensor]] = {}
    hits: dict[str, bool] = {}
    t_feat = time.perf_counter()
    split_sets = {"train": train_set, "test": test_set}
    for which in ["vicreg", "random_init"] if args.baselines else ["vicreg"]:
        progress.stage(f"features of {which}: {len(train_set)} train + {len(test_set)} test rows on {run.device}")
        track = {part: progress.batches(f"features {which} {part}", len(d)) for part, d in split_sets.items()}
        f_train, hit_a = encoder_features(enc, train_set.rows, which=which, labels=train_y, track=track["train"], **kw)
        f_test, hit_b = encoder_features(enc, test_set.rows, which=which, labels=test_y, track=track["test"], **kw)
        if hit_a and hit_b:
            progress.stage(f"features of {which}: read from the cache ({cache_dir})")
        feature_sets[which] = (f_train, f_test)
        hits[which] = hit_a and hit_b
    notes: dict[str, str] = {}
    if args.baselines:
        n_pixels = (len(train_set) + len(test_set)) * train_set.rows[0].numel()
        if n_pixels <= MAX_PIXEL_ELEMENTS:
            feature_sets["pixels"] = (
                raw_features(train_set.rows, enc.mean, enc.std),
                raw_features(test_set.rows, enc.mean, enc.std),
            )
        else:
            notes["pixels"] = f"skipped: {n_pixels:,} pixel values exceed {MAX_PIXEL_ELEMENTS:,}"
    feature_seconds = time.perf_counter() - t_feat

    results = {}
    for name, (f_train, f_test) in feature_sets.items():
        progress.stage(f"probes of {name} ({f_train.shape[1]} dimensions)")
        results[name] = evaluate_features(
            f_train, train_y.cpu(), f_test, test_y.cpu(), settings, device=run.device, stage=progress.stage
        )
        if name in hits:
            results[name]["cached_features"] = hits[name]

    report: dict[str, Any] = {
        "checkpoint": str(enc.checkpoint),
        "step": enc.step,
        "backbone": enc.config.model.backbone,
        "data": _data_report(run, train_split, test_split, split_note),
        "protocol": {
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
            **eval_protocol(settings, len(train_set), len(test_set)),
        },
        "results": results,
        "label_free": label_free,
        "notes": notes,
        "device": str(run.device),
        "precision": args.precision,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "seconds": {"features": round(feature_seconds, 3), "total": round(time.perf_counter() - t_start, 3)},
    }
    return _write(run, args, report)


def _write(run: OpenRun, args: EvalArgs, report: dict[str, Any]) -> dict[str, Any]:
    target = Path(args.out) if args.out is not None else run.run_dir / "eval.json"
    text = json.dumps(report, indent=2, allow_nan=False)
    atomic_write(target, lambda f: f.write(text.encode()))
    report["path"] = str(target)
    return report


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a measure that could not be computed (alpha-ReQ of a collapsed encoder) is null."""
    return {k: (v if math.isfinite(v) else None) for k, v in values.items()}


def _label_free(run: OpenRun, args: EvalArgs) -> dict[str, Any]:
    """eval.json's ``label_free``: the measures of the trained encoder (and of the random-init one, with
    ``args.baselines``) on a seeded sample of held-out rows, and where the rows come from."""
    s, enc = args.protocol, run.encoder
    began = time.perf_counter()
    sample = label_free_sample(
        run.kind, enc.config, enc.spec, run.source, rows=s.label_free_rows, seed=s.seed, download=args.download
    )
    init = random_init_model(enc, s.seed).to(run.device) if args.baselines else None
    amp = autocast_dtype(args.precision, run.device)
    scores = measure_label_free(
        sample, enc.model, run.device, init_model=init, seed=s.seed, copies=s.label_free_copies,
        lidar_rows=s.label_free_lidar_rows, batch_size=args.batch_size, amp_dtype=amp,
    )  # fmt: skip
    names = ("rankme", "lidar", "alpha_req")
    out: dict[str, Any] = {
        "sample": sample.note,
        "rows": int(sample.rows.shape[0]),
        "lidar_rows": min(int(sample.rows.shape[0]), s.label_free_lidar_rows),
        "copies": s.label_free_copies,
        "vicreg": _finite({k: scores[k] for k in names}),
    }
    if init is not None:
        out["random_init"] = _finite({k: scores[f"{k}_init"] for k in names})
        out["vs_init"] = _finite({f"{k}_vs_init": scores[f"{k}_vs_init"] for k in names if f"{k}_vs_init" in scores})
        out["cka_to_init"] = scores["cka_to_init"]
    out["seconds"] = round(time.perf_counter() - began, 3)
    return out


def _unlabelled_report(
    run: OpenRun, args: EvalArgs, label_free: dict[str, Any], why: str, t_start: float
) -> dict[str, Any]:
    """eval.json of data without labels: the label-free measures only."""
    enc, settings = run.encoder, args.protocol
    return {
        "checkpoint": str(enc.checkpoint),
        "step": enc.step,
        "backbone": enc.config.model.backbone,
        "data": {"source": run.source, "kind": enc.spec.kind, "labels": False, "split": label_free.get("sample", "")},
        "protocol": {
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
            "label_free": eval_protocol(settings)["label_free"],
        },
        "results": {},
        "label_free": label_free,
        "notes": {"labels": f"{why.split(';')[0]}: kNN and the linear probes were skipped; the label-free "
                  "measures above need no labels"},
        "device": str(run.device),
        "precision": args.precision,
        "machine": {
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()
        },
        "seconds": {"total": round(time.perf_counter() - t_start, 3)},
    }  # fmt: skip


def _data_report(run: OpenRun, train: Split, test: Split, split_note: str) -> dict[str, Any]:
    """eval.json's ``data``: what was read, how it was split, resized and normalised."""
    enc = run.encoder
    train_y, test_y = train.data.labels, test.data.labels
    assert train_y is not None and test_y is not None
    native = train.native_shape
    return {
        "source": run.source,
        "kind": enc.spec.kind,
        "train": train.data.name,
        "test": test.data.name,
        "n_train": len(train.data),
        "n_test": len(test.data),
        "num_classes": int(max(int(train_y.max()), int(test_y.max()))) + 1,
        "classes": list(train.data.classes),
        "split": split_note,
        "native_size": list(native[-2:]) if native else None,
        "eval_size": enc.image_size or None,
        "input_shape": list(train.data.rows.shape[1:]),
        "resize": (
            "none"
            if not enc.image_size or native == (enc.image_size, enc.image_size)
            else "shorter side to eval_size (bilinear, antialiased), centre crop; whole images, no random crop"
        ),
        "normalize": {"mean": list(enc.mean), "std": list(enc.std)},
    }
