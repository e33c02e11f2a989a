"""In-memory float data: signals ``(N, C, T)``, table rows ``(N, F)`` and two-modality pairs, with their loader.

Sources (:func:`load_arrays`, :func:`load_pairs`):

* a ``.npz`` file: ``x`` (and optional ``y`` labels) for the training split, ``x_test``/``y_test`` for the test
  split; pairs hold ``x_a``, ``x_b`` (and ``y``; ``x_a_test``, ``x_b_test``, ``y_test``);
* ``aeon:<Name>``: a time-series classification set bundled inside the aeon package (``pip install aeon``; read
  from the installed files, no network), e.g. ``aeon:GunPoint``, ``aeon:BasicMotions``, ``aeon:OSULeaf``;
* ``sklearn:<name>``: a table bundled with scikit-learn (``wine``, ``breast_cancer``, ``digits``, ``iris``),
  split 75 / 25 stratified with a fixed seed (there is no official split).

:class:`ArrayLoader` batches one tensor or a :class:`~vicreg.augment.TensorPair` by row with the epoch order,
sharding and resume rules of :class:`vicreg.data.InMemoryLoader` (it shares their implementation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from vicreg.augment.pairs import TensorPair
from vicreg.data.loaders import _EpochState, _take

__all__ = [
    "SKLEARN_TABLES",
    "ArrayLoader",
    "FloatArrayDataset",
    "aeon_datasets",
    "as_float_array",
    "load_arrays",
    "load_pairs",
]

Kind = Literal["signal", "table"]
SKLEARN_TABLES = ("wine", "breast_cancer", "digits", "iris")
_SPLITS = ("train", "test")


def as_float_array(x: Any, kind: Kind, *, name: str = "arrays") -> Tensor:
    """A contiguous float32 tensor of signals ``(N, C, T)`` (``(N, T)`` is read as one channel) or table rows
    ``(N, F)``; NaN and infinite values are refused."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
    if kind == "signal" and t.ndim == 2:
        t = t[:, None, :]
    want = {"signal": 3, "table": 2}[kind]
    layout = {"signal": "(N, C, T) or (N, T)", "table": "(N, F)"}[kind]
    if t.ndim != want or t.shape[0] == 0 or min(t.shape[1:]) == 0:
        raise ValueError(f"{name}: {kind} data must be a non-empty array of shape {layout}, got {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name}: {kind} data must be numeric, got dtype {t.dtype}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: the {kind} data holds NaN or infinite values; impute or drop them first")
    return t.contiguous()


def _labels(y: Any, n: int, name: str) -> Tensor | None:
    if y is None:
        return None
    t = torch.as_tensor(np.asarray(y)).reshape(-1)
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{name}: labels must be integers, got non-integral {t.dtype} values")
    if t.shape[0] != n:
        raise ValueError(f"{name}: {n} rows but {t.shape[0]} labels")
    return t.to(torch.int64)


@dataclass(frozen=True)
class FloatArrayDataset:
    """Signals ``(N, C, T)`` or table rows ``(N, F)`` as one float32 tensor, with optional ``int64`` labels."""

    x: Tensor
    labels: Tensor | None = None
    classes: tuple[str, ...] = ()
    name: str = "arrays"

    @classmethod
    def from_arrays(
        cls, x: Any, labels: Any = None, *, kind: Kind, classes: Sequence[str] = (), name: str = "arrays"
    ) -> FloatArrayDataset:
        t = as_float_array(x, kind, name=name)
        return cls(t, _labels(labels, t.shape[0], name), tuple(classes), name)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def kind(self) -> Kind:
        return "signal" if self.x.ndim == 3 else "table"

    @property
    def channels(self) -> int:
        """Signal channels, or table features (what the encoder's ``in_channels`` is)."""
        return self.x.shape[1]

    @property
    def mean(self) -> tuple[float, ...]:
        """Per channel (signals) or feature (tables) mean."""
        return tuple(float(v) for v in self._flat().mean(0))

    @property
    def std(self) -> tuple[float, ...]:
        """Per channel / feature population standard deviation; 1 where it is 0."""
        s = self._flat().std(0, unbiased=False)
        return tuple(float(v) if v > 0 else 1.0 for v in s)

    def _flat(self) -> Tensor:
        x = self.x.double()
        return x.transpose(1, 2).reshape(-1, x.shape[1]) if x.ndim == 3 else x

    def to(self, device: torch.device | str) -> FloatArrayDataset:
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, x=self.x.to(device), labels=labels)

    def subset(self, index: Tensor | Sequence[int]) -> FloatArrayDataset:
        idx = torch.as_tensor(index, dtype=torch.int64, device=self.x.device)
        labels = None if self.labels is None else self.labels[idx.to(self.labels.device)]
        return replace(self, x=self.x[idx], labels=labels)


# ------------------------------------------------------------------------------------------------ sources


def _check_split(split: str, where: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"{where}: unknown split {split!r}; choose train or test")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: signals and tables are read from a .npz file (keys x, y, x_test, y_test)")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _aeon_root() -> Path:
    try:
        import aeon.datasets
    except ImportError as err:
        raise ImportError(
            "aeon:<Name> datasets need aeon: pip install aeon (or pip install 'vicreg[timeseries]')"
        ) from err
    return Path(aeon.datasets.__file__).parent / "data"


def aeon_datasets() -> list[str]:
    """Names of the classification sets bundled inside the installed aeon package (train and test files)."""
    root = _aeon_root()
    return sorted(
        p.name for p in root.iterdir() if (p / f"{p.name}_TRAIN.ts").is_file() and (p / f"{p.name}_TEST.ts").is_file()
    )


def _load_aeon(name: str, split: str) -> FloatArrayDataset:
    from aeon.datasets import load_from_ts_file

    root = _aeon_root()
    if not (root / name / f"{name}_TRAIN.ts").is_file():
        raise ValueError(
            f"aeon:{name} is not bundled with the installed aeon (no download is attempted); bundled: "
            f"{', '.join(aeon_datasets())}"
        )
    parts = {s: load_from_ts_file(str(root / name / f"{name}_{s.upper()}.ts")) for s in _SPLITS}
    for s, (x, _) in parts.items():
        if not isinstance(x, np.ndarray):
            raise ValueError(f"aeon:{name} ({s}) holds series of unequal length; pick an equal-length set")
    classes = np.unique(np.concatenate([np.asarray(y) for _, y in parts.values()]))
    x, y = parts[split]
    codes = np.searchsorted(classes, np.asarray(y))
    return FloatArrayDataset.from_arrays(
        x, codes, kind="signal", classes=[str(c) for c in classes], name=f"aeon:{name}:{split}"
    )


def _load_sklearn(name: str, split: str) -> FloatArrayDataset:
    try:
        import sklearn.datasets
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("sklearn:<name> tables need scikit-learn: pip install scikit-learn") from err
    if name not in SKLEARN_TABLES:
        raise ValueError(f"unknown scikit-learn table {name!r}; choose one of {', '.join(SKLEARN_TABLES)}")
    bunch = getattr(sklearn.datasets, f"load_{name}")()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    classes = [str(c) for c in getattr(bunch, "target_names", np.unique(bunch.target))]
    return FloatArrayDataset.from_arrays(x, y, kind="table", classes=classes, name=f"sklearn:{name}:{split}")


def load_arrays(source: str | os.PathLike[str], split: str = "train", *, kind: Kind) -> FloatArrayDataset:
    """Load signals (``kind="signal"``) or table rows (``kind="table"``) into memory; see the module doc."""
    text = os.fspath(source)
    _check_split(split, text)
    if kind not in ("signal", "table"):
        raise ValueError(f"kind must be 'signal' or 'table', got {kind!r}")
    if text.startswith("aeon:"):
        if kind != "signal":
            raise ValueError(f"{text} is a time-series set: use it with modality signal")
        return _load_aeon(text.removeprefix("aeon:"), split)
    if text.startswith("sklearn:"):
        if kind != "table":
            raise ValueError(f"{text} is a table: use it with modality table")
        return _load_sklearn(text.removeprefix("sklearn:"), split)
    path = Path(text).expanduser()
    arrays = _read_npz(path)
    suffix = "" if split == "train" else "_test"
    if f"x{suffix}" not in arrays:
        raise (KeyError if split == "test" else ValueError)(
            f"{path}: no array 'x{suffix}' for the {split} split (keys: {', '.join(sorted(arrays))})"
        )
    return FloatArrayDataset.from_arrays(
        arrays[f"x{suffix}"], arrays.get(f"y{suffix}"), kind=kind, name=f"{path.name}:{split}"
    )


def load_pairs(path: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray, Tensor | None]:
    """The raw arrays ``x_a``, ``x_b`` and labels (or None) of a pair ``.npz`` file (``_test`` keys for the test
    split); the caller converts each side for its modality. Rows must correspond."""
    path = Path(path).expanduser()
    _check_split(split, str(path))
    arrays = _read_npz(path)
    suffix = "" if split == "train" else "_test"
    missing = [k for k in (f"x_a{suffix}", f"x_b{suffix}") if k not in arrays]
    if missing:
        raise (KeyError if split == "test" else ValueError)(
            f"{path}: a pair file needs x_a and x_b (and x_a_test, x_b_test for a test split); missing "
            f"{', '.join(missing)} (keys: {', '.join(sorted(arrays))})"
        )
    a, b = arrays[f"x_a{suffix}"], arrays[f"x_b{suffix}"]
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{path}: x_a{suffix} has {a.shape[0]} rows but x_b{suffix} has {b.shape[0]}; rows must pair up"
        )
    return a, b, _labels(arrays.get(f"y{suffix}"), a.shape[0], str(path))


# ------------------------------------------------------------------------------------------------ loader


class ArrayLoader:
    """Batches of a tensor (or a :class:`TensorPair` of row-aligned tensors) and its labels, by row.

    Yields ``(x, labels_or_None)``; ``x`` is a tensor, or a :class:`TensorPair` for a pair. Batches are made
    on the device the tensors live on. Epoch order, sharding, ``drop_last`` and ``set_epoch(epoch, start_batch)``
    are those of :class:`vicreg.data.InMemoryLoader`.
    """

    def __init__(
        self,
        x: Tensor | TensorPair,
        labels: Tensor | None,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        tensors = tuple(x) if isinstance(x, TensorPair) else (x,)
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors) or (labels is not None and labels.shape[0] != n):
            raise ValueError("the arrays and labels of an ArrayLoader must have the same number of rows")
        self.x, self.labels = x, labels
        self._state = _EpochState(n, batch_size, shuffle, drop_last, seed, rank, world_size)

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        return len(self._state)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Read epoch ``epoch``'s order from batch ``start_batch`` on, until the next call."""
        self._state.set_epoch(epoch, start_batch)

    def __iter__(self) -> Iterator[tuple[Tensor | TensorPair, Tensor | None]]:
        idx = self._state.indices()  # once per epoch; the batches slice it
        step = self._state.batch_size
        for start in range(0, idx.shape[0], step):
            sel = idx[start : start + step]
            x = (
                TensorPair(_take(self.x.a, sel), _take(self.x.b, sel))
                if isinstance(self.x, TensorPair)
                else _take(self.x, sel)
            )
            yield x, None if self.labels is None else _take(self.labels, sel)
