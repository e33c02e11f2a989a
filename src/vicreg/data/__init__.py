"""Data: sources (by name or path), in-memory datasets and the loaders that batch them.

Two paths, one interface (``set_epoch(epoch, start_batch)``, ``len()`` batches per epoch, iteration yields
``(rows, labels_or_None)``):

* in memory: :func:`load` -> :class:`ImageDataset` (uint8 images), :func:`load_float_rows` ->
  :class:`FloatDataset` (signals, tables), :func:`load_pairs` (two-modality pairs) -> :class:`InMemoryLoader`
  (batches by indexing, on the device the rows live on);
* streamed: :func:`folder_loader` -> :class:`FolderLoader` (image folders, decoded in DataLoader workers).

All sources are read in :mod:`vicreg.data.sources`.
"""

from typing import TYPE_CHECKING

from vicreg.data.arrays import (
    Dataset,
    FloatDataset,
    ImageDataset,
    as_float_array,
    as_uint8_images,
    channel_stats,
    resize_images,
)
from vicreg.data.folder import (
    IMAGE_EXTENSIONS,
    BadImageError,
    FolderSample,
    ImageFolderSource,
    decode_image,
    scan_folder,
    shorter_sides,
)
from vicreg.data.loaders import (
    BadImageWarning,
    FolderBatch,
    FolderLoader,
    InMemoryLoader,
    collate_folder,
    folder_loader,
    load_folder,
    shard_indices,
)
from vicreg.data.readers import read_idx
from vicreg.data.sources import (
    DATASET_NAMES,
    DEBIAN_FASHION_MNIST,
    SKLEARN_TABLES,
    SizedImages,
    aeon_datasets,
    find_dataset,
    has_splits,
    is_image_folder,
    load,
    load_at_size,
    load_float_rows,
    load_pairs,
    search_roots,
)
from vicreg.deprecation import renamed

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST",
    "IMAGE_EXTENSIONS",
    "SKLEARN_TABLES",
    "BadImageError",
    "BadImageWarning",
    "Dataset",
    "FloatDataset",
    "FolderBatch",
    "FolderLoader",
    "FolderSample",
    "ImageDataset",
    "ImageFolderSource",
    "InMemoryLoader",
    "SizedImages",
    "aeon_datasets",
    "as_float_array",
    "as_uint8_images",
    "channel_stats",
    "collate_folder",
    "decode_image",
    "find_dataset",
    "folder_loader",
    "has_splits",
    "is_image_folder",
    "load",
    "load_at_size",
    "load_float_rows",
    "load_folder",
    "load_pairs",
    "read_idx",
    "resize_images",
    "scan_folder",
    "search_roots",
    "shard_indices",
    "shorter_sides",
]

if TYPE_CHECKING:  # renamed names, kept one release
    ArrayDataset = ImageDataset
    FloatArrayDataset = FloatDataset
    load_arrays = load_float_rows
else:
    __getattr__ = renamed(
        __name__, {"ArrayDataset": ImageDataset, "FloatArrayDataset": FloatDataset, "load_arrays": load_float_rows}
    )
