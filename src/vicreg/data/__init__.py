"""Data: sources (by name or path) and loaders that deliver ``uint8 (N, C, H, W)`` batches.

Two paths, one interface (``set_epoch(epoch, start_batch)``, iteration yields ``(images, labels_or_None)``):

* in memory: :func:`load` -> :class:`ArrayDataset` -> :class:`InMemoryLoader` (batches by indexing);
* streamed: :func:`folder_loader` -> :class:`FolderLoader` (decoding in DataLoader workers).
"""

from vicreg.data.arrays import ArrayDataset, as_uint8_images, channel_stats, resize_images
from vicreg.data.folder import (
    IMAGE_EXTENSIONS,
    BadImageError,
    FolderSample,
    ImageFolderSource,
    decode_image,
    scan_folder,
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
    find_dataset,
    has_splits,
    is_image_folder,
    load,
    search_roots,
)

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "BadImageError",
    "BadImageWarning",
    "FolderBatch",
    "FolderLoader",
    "FolderSample",
    "ImageFolderSource",
    "InMemoryLoader",
    "as_uint8_images",
    "channel_stats",
    "collate_folder",
    "decode_image",
    "find_dataset",
    "folder_loader",
    "has_splits",
    "is_image_folder",
    "load",
    "load_folder",
    "read_idx",
    "resize_images",
    "scan_folder",
    "search_roots",
    "shard_indices",
]
