"""``vicreg embed``: the frozen representation of a dataset, written to ``.npy``, ``.npz`` or ``.parquet``.

* ``.npy``: the float32 matrix ``(N, feature_dim)``, rows in the data's order;
* ``.npz``: ``embeddings``, ``labels`` (``-1`` where unlabelled) and ``index``;
* ``.parquet`` (needs ``pip install pyarrow``, or ``pip install 'vicreg[parquet]'``): one row per image with
  ``index``, ``path`` (the file for image folders, null otherwise), ``label`` and ``embedding`` (a fixed-size
  list of float32).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vicreg.checkpoint import atomic_write
from vicreg.data import ArrayDataset
from vicreg.data.sources import has_splits
from vicreg.evaluate.features import extract_features
from vicreg.evaluate.load import load_encoder

__all__ = ["SUFFIXES", "embed_to_file", "load_with_paths", "write_embeddings"]

SUFFIXES = (".npy", ".npz", ".parquet")


def load_with_paths(
    source: str | os.PathLike[str], split: str, *, size: int, channels: int, download: bool = False
) -> tuple[ArrayDataset, list[str] | None]:
    """A dataset at ``size x size`` with its file paths (image folders) or ``None`` paths (arrays, named sets).

    Images whose size differs are resized as :mod:`vicreg.evaluate.data` describes.
    """
    path = Path(os.fspath(source)).expanduser()
    if not (path.is_dir() and not has_splits(source)):
        from vicreg.data import load

        return load(source, split, channels=channels, download=download).resized(size), None
    from vicreg.data import ImageFolderSource
    from vicreg.data.loaders import decode_folder

    return decode_folder(ImageFolderSource(path, size, channels=channels))


def write_embeddings(
    path: str | os.PathLike[str], embeddings: np.ndarray, labels: np.ndarray, paths: list[str] | None = None
) -> Path:
    """Write ``embeddings`` ``(N, D)`` (and labels, paths) in the format named by the suffix of ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown output format {path.suffix!r} for {path}: use one of {', '.join(SUFFIXES)}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = np.arange(embeddings.shape[0], dtype=np.int64)
    if suffix == ".npy":
        return atomic_write(path, lambda f: np.save(f, embeddings))
    if suffix == ".npz":
        return atomic_write(path, lambda f: np.savez(f, embeddings=embeddings, labels=labels, index=index))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(
            "writing .parquet needs pyarrow: pip install pyarrow (or pip install 'vicreg[parquet]'), "
            "or write .npy / .npz instead"
        ) from err
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "index": pa.array(index),
            "path": pa.array(paths if paths is not None else [None] * len(index), type=pa.string()),
            "label": pa.array(labels.astype(np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1]),
        }
    )
    return atomic_write(path, lambda f: pq.write_table(table, f))


def embed_to_file(
    checkpoint: str | os.PathLike[str],
    data: str | None,
    out: str | os.PathLike[str],
    *,
    split: str = "train",
    device: str = "auto",
    batch_size: int = 512,
    download: bool = False,
) -> tuple[Path, int, int]:
    """Embed ``data`` (default: the run's training data) with a run's encoder; returns ``(path, rows, dim)``."""
    from vicreg.distributed import DistInfo
    from vicreg.train import resolve_device

    if Path(out).suffix.lower() not in SUFFIXES:
        raise ValueError(f"unknown output format {Path(out).suffix!r} for {out}: use one of {', '.join(SUFFIXES)}")
    if Path(out).suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "writing .parquet needs pyarrow: pip install pyarrow (or pip install 'vicreg[parquet]'), "
                "or write .npy / .npz instead"
            ) from err
    dev = resolve_device(device, DistInfo())
    enc = load_encoder(checkpoint, dev)
    dataset, paths = load_with_paths(
        data or enc.config.data, split, size=enc.image_size, channels=enc.channels, download=download
    )
    features = extract_features(
        enc.model.embed, dataset.images, batch_size=batch_size, device=dev, mean=enc.mean, std=enc.std
    )
    labels = dataset.labels.cpu().numpy() if dataset.labels is not None else np.full(len(dataset), -1, dtype=np.int64)
    written = write_embeddings(out, features.numpy(), labels, paths)
    return written, int(features.shape[0]), int(features.shape[1])
