"""Hugging Face datasets as an image source: ``hf:<path-or-name>[:<split>]`` and ``hf-stream:...``.

* ``hf:`` a dataset saved with ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), another local folder
  ``datasets.load_dataset`` reads (e.g. a clone of a Hub repository), or a Hub name already in the local Hugging
  Face cache. Nothing is fetched unless ``download=True`` (then ``load_dataset`` may fetch the whole dataset).
  :func:`hf_loader` decodes the images in DataLoader workers and batches them with :class:`FolderLoader`, so the
  epoch order, the per-rank shards and the exact mid-epoch resume are those of image folders.
  :func:`load_hf_images` decodes a split into memory for ``vicreg eval`` / ``embed``.
* ``hf-stream:`` the same sources as an iterable dataset, read in order with a shuffle buffer, for data that
  does not fit on the disk (:func:`hf_stream_loader`; a Hub name with ``download=True`` streams from the Hub).

The image column is the one whose feature is ``datasets.Image``, the label column the ``ClassLabel`` one
(:func:`find_columns`; both can be named instead). Images become ``uint8 (C, size, size)`` exactly as folder
images do (:func:`vicreg.data.decode_image`: shorter side resized to ``size``, centre crop, RGB or grey).
``datasets`` is an optional dependency: ``pip install 'vicreg[hf]'``.

One module per job: :mod:`~vicreg.data.hf.source` opens a dataset (specs, offline loading, splits, columns),
:mod:`~vicreg.data.hf.map_style` reads it by index with the folder loader, :mod:`~vicreg.data.hf.stream` reads it
as a stream.
"""

from typing import TYPE_CHECKING

from vicreg.data.hf.map_style import HFImageSource, hf_loader, load_hf_images
from vicreg.data.hf.source import HFSource, find_columns, hf_splits, is_hf_source, open_hf_dataset, parse_hf_source
from vicreg.data.hf.stream import HFStreamLoader, HFStreamSource, hf_stream_loader
from vicreg.deprecation import renamed

__all__ = [
    "HFImageSource",
    "HFSource",
    "HFStreamLoader",
    "HFStreamSource",
    "find_columns",
    "hf_loader",
    "hf_splits",
    "hf_stream_loader",
    "is_hf_source",
    "load_hf_images",
    "open_hf_dataset",
    "parse_hf_source",
]

if TYPE_CHECKING:  # load_hf_images was called load_hf_arrays (one release)
    load_hf_arrays = load_hf_images
else:
    __getattr__ = renamed(__name__, {"load_hf_arrays": load_hf_images})
