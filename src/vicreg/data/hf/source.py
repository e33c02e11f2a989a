"""Opening a Hugging Face dataset: ``hf:`` / ``hf-stream:`` specs, offline loading, splits and columns.

:func:`open_hf_dataset` gives one split of a dataset saved with ``save_to_disk``, of another local folder
``datasets.load_dataset`` reads, or of a Hub name already in the local cache (nothing is fetched unless
``download=True``). :func:`find_columns` finds the image and label columns. The helpers at the end
(:func:`undecoded`, :func:`decode_value`) are what the map-style (:mod:`vicreg.data.hf.map_style`) and streaming
(:mod:`vicreg.data.hf.stream`) readers share.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from torch import Tensor

from vicreg.data.folder import decode_image

__all__ = [
    "HF_PREFIX",
    "HF_STREAM_PREFIX",
    "HFSource",
    "as_source",
    "decode_value",
    "find_columns",
    "guess_channels",
    "hf_splits",
    "image_channels",
    "import_datasets",
    "is_hf_source",
    "load_all",
    "open_hf_dataset",
    "parse_hf_source",
    "select_split",
    "spec_name",
    "undecoded",
]

HF_PREFIX = "hf:"
HF_STREAM_PREFIX = "hf-stream:"
INSTALL_HINT = "pip install 'vicreg[hf]'"

# Split names (``train``, ``validation``, ``train+test``): what may follow the last ``:`` of a spec.
_SPLIT = re.compile(r"[A-Za-z0-9_.\-]+(\+[A-Za-z0-9_.\-]+)*")
# PIL modes that hold one channel: such images are read as grey when ``channels`` is not given.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_PREFERRED_IMAGE = ("image", "img")
_PREFERRED_LABEL = ("label", "labels")


@dataclass(frozen=True)
class HFSource:
    """A parsed ``hf:`` / ``hf-stream:`` spec.

    Attributes:
        name: a local path (as written) or a Hub dataset name (``owner/name``).
        split: the split named in the spec (``None``: the caller's split applies).
        streaming: ``hf-stream:`` (an iterable dataset read in order) rather than ``hf:``.
    """

    name: str
    split: str | None = None
    streaming: bool = False

    @property
    def path(self) -> Path:
        return Path(self.name).expanduser()

    @property
    def is_local(self) -> bool:
        """A local folder (else a Hub name)."""
        return self.path.exists()

    def __str__(self) -> str:
        prefix = HF_STREAM_PREFIX if self.streaming else HF_PREFIX
        return f"{prefix}{self.name}" + (f":{self.split}" if self.split else "")


def is_hf_source(spec: str | os.PathLike[str]) -> bool:
    """True for ``hf:...`` and ``hf-stream:...`` specs."""
    return isinstance(spec, str) and spec.startswith((HF_PREFIX, HF_STREAM_PREFIX))


def parse_hf_source(spec: str) -> HFSource:
    """Parse ``hf:<path-or-name>[:<split>]`` or ``hf-stream:<path-or-name>[:<split>]``.

    The text after the last ``:`` is a split when it looks like one (letters, digits, ``_.-``, ``+`` between
    names) and the whole rest is not an existing path; so ``hf:C:/data/set`` and paths holding ``:`` work.
    """
    if not is_hf_source(spec):
        raise ValueError(f"{spec!r} is not a Hugging Face source; write hf:<path-or-name>[:<split>]")
    streaming = spec.startswith(HF_STREAM_PREFIX)
    rest = spec[len(HF_STREAM_PREFIX if streaming else HF_PREFIX) :]
    split: str | None = None
    head, sep, tail = rest.rpartition(":")
    if sep and head and _SPLIT.fullmatch(tail) and not Path(rest).expanduser().exists():
        rest, split = head, tail
    if not rest:
        raise ValueError(f"{spec!r} names no dataset; write hf:<path-or-name>[:<split>], e.g. hf:./my_set:train")
    return HFSource(rest, split, streaming)


def as_source(source: HFSource | str) -> HFSource:
    return source if isinstance(source, HFSource) else parse_hf_source(source)


def import_datasets() -> Any:
    """The ``datasets`` module, or an ImportError naming the extra to install."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"Hugging Face datasets (hf: sources) need the 'datasets' package: {INSTALL_HINT}") from e
    return datasets


@contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """No network for ``datasets`` / ``huggingface_hub`` inside (both read their offline flags at import)."""
    if not enabled:
        yield
        return
    datasets = import_datasets()
    import huggingface_hub.constants as hub_constants

    targets = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")]
    targets.append((hub_constants, "HF_HUB_OFFLINE"))
    saved_attrs = [(obj, name, getattr(obj, name)) for obj, name in targets if hasattr(obj, name)]
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    verbosity = datasets.logging.get_verbosity()
    try:
        for obj, name, _ in saved_attrs:
            setattr(obj, name, True)
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        datasets.logging.set_verbosity_error()  # "Using the latest cached version ..." is expected here
        yield
    finally:
        for obj, name, value in saved_attrs:
            setattr(obj, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        datasets.logging.set_verbosity(verbosity)


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_all(source: HFSource, download: bool, streaming: bool = False) -> Any:
    """``Dataset``, ``DatasetDict``, or (Hub + ``streaming``) ``IterableDatasetDict`` for ``source``."""
    datasets = import_datasets()
    path = source.path
    if source.is_local:
        if _is_saved_to_disk(path):
            return datasets.load_from_disk(str(path))
        if not path.is_dir():
            raise ValueError(f"{source}: {path} is a file; point to the folder written by save_to_disk")
    try:
        with _offline(not download):
            name = str(path) if source.is_local else source.name
            return datasets.load_dataset(name, streaming=streaming and download)
    except (ConnectionError, FileNotFoundError) as e:
        if source.is_local:
            raise FileNotFoundError(f"{source}: {path} holds no dataset datasets can read ({e})") from e
        if download:
            raise FileNotFoundError(f"{source}: could not fetch {source.name!r} from the Hugging Face Hub ({e})") from e
        raise FileNotFoundError(
            f"{source}: {source.name!r} is not a local folder and not in the local Hugging Face cache; "
            "check the path, or pass --download to fetch it from the Hub"
        ) from e
    except Exception as e:  # datasets raises many types for unreadable data; one line names the source
        if type(e).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
            raise FileNotFoundError(f"{source}: no dataset found ({e}); check the path or name") from e
        raise


def _split_names(data: Any) -> tuple[str, ...]:
    return tuple(data.keys()) if isinstance(data, Mapping) else ()


def hf_splits(source: HFSource | str, *, download: bool = False) -> tuple[str, ...]:
    """The split names of ``source`` (empty for a single saved ``Dataset``, which serves any split)."""
    return _split_names(load_all(as_source(source), download))


def select_split(data: Any, source: HFSource, split: str | None) -> Any:
    """One split of a loaded dataset: the spec's split, else ``split``; ``a+b`` concatenates."""
    datasets = import_datasets()
    wanted = source.split or split
    if not isinstance(data, Mapping):  # one Dataset: it is every split the caller asks for, unless the spec names one
        own = None if getattr(data, "split", None) is None else str(data.split)
        if source.split and own is not None and source.split != own:
            raise ValueError(f"{source}: the saved dataset is the {own!r} split, not {source.split!r}")
        return data
    names = tuple(data.keys())
    if wanted is None:
        if len(names) == 1:
            return data[names[0]]
        raise ValueError(f"{source}: name a split, one of {', '.join(names)} (e.g. {source}:{names[0]})")
    parts = wanted.split("+")
    missing = [p for p in parts if p not in data]
    if missing:
        raise ValueError(
            f"{source}: no split {missing[0]!r}; the splits are {', '.join(names)} (write {HF_PREFIX}<name>:<split>)"
        )
    if len(parts) == 1:
        return data[parts[0]]
    if isinstance(data[parts[0]], datasets.IterableDataset):
        return datasets.interleave_datasets([data[p] for p in parts], stopping_strategy="all_exhausted")
    return datasets.concatenate_datasets([data[p] for p in parts])


def open_hf_dataset(source: HFSource | str, split: str | None = None, *, download: bool = False) -> Any:
    """The ``datasets.Dataset`` of ``source`` (a spec or :class:`HFSource`) for ``split``.

    The split named in the spec wins over ``split`` (the caller's "train" / "test"); a ``DatasetDict`` with a
    single split needs neither. A single saved ``Dataset`` is returned for any ``split``.

    Raises:
        ImportError: ``datasets`` is not installed (the message names ``vicreg[hf]``).
        FileNotFoundError: no such folder, and the name is not in the local cache (without ``download``).
        ValueError: the split does not exist (the message lists the splits).
    """
    src = as_source(source)
    return select_split(load_all(src, download), src, split)


def _describe(features: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())


def find_columns(
    features: Mapping[str, Any], data_column: str | None = None, label_column: str | None = None
) -> tuple[str, str | None, tuple[str, ...]]:
    """``(image column, label column or None, class names)`` from a dataset's ``features``.

    Without overrides the image column is the ``datasets.Image`` feature (``image`` / ``img`` when several) and
    the label column the ``ClassLabel`` feature (``label`` / ``labels`` when several, else the first one,
    with a warning); no ``ClassLabel`` means unlabeled. ``label_column`` may also name an integer column
    (class names are then empty).

    Raises:
        ValueError: a named column does not exist or has the wrong type, or no (or an ambiguous) image column;
            the message lists the columns and their types.
    """
    datasets = import_datasets()
    if not features:
        raise ValueError("the dataset declares no features, so its image column cannot be found")
    images = [k for k, v in features.items() if isinstance(v, datasets.Image)]
    if data_column is not None:
        if data_column not in features:
            raise ValueError(f"no column {data_column!r} (--data-column); the columns are {_describe(features)}")
        if not isinstance(features[data_column], datasets.Image):
            raise ValueError(
                f"column {data_column!r} is {type(features[data_column]).__name__}, not an Image feature; "
                f"the columns are {_describe(features)}"
            )
        image = data_column
    elif len(images) == 1:
        image = images[0]
    else:
        preferred = [k for k in _PREFERRED_IMAGE if k in images]
        if not preferred:
            what = f"several image columns ({', '.join(images)})" if images else "no Image column"
            raise ValueError(f"{what}; name one with --data-column (the columns are {_describe(features)})")
        image = preferred[0]

    labels = [k for k, v in features.items() if isinstance(v, datasets.ClassLabel)]
    if label_column is not None:
        if label_column not in features:
            raise ValueError(f"no column {label_column!r} (--label-column); the columns are {_describe(features)}")
        feature = features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            return image, label_column, tuple(feature.names)
        if isinstance(feature, datasets.Value) and re.fullmatch(r"u?int(8|16|32|64)", str(feature.dtype)):
            return image, label_column, ()
        fix = (
            f"; turn it into a ClassLabel with dataset.class_encode_column({label_column!r}) and save_to_disk"
            if isinstance(feature, datasets.Value) and str(feature.dtype) in ("string", "large_string")
            else ""
        )
        raise ValueError(
            f"label column {label_column!r} is {feature!r}, not a ClassLabel or integer column{fix} "
            f"(the columns are {_describe(features)})"
        )
    if not labels:
        return image, None, ()
    preferred = [k for k in _PREFERRED_LABEL if k in labels]
    label = preferred[0] if preferred else labels[0]
    if len(labels) > 1 and not preferred:
        warnings.warn(
            f"several ClassLabel columns ({', '.join(labels)}); using {label!r} (choose with --label-column)",
            stacklevel=2,
        )
    return image, label, tuple(features[label].names)


def image_file(value: Any) -> Any:
    """What ``PIL.Image.open`` reads for one undecoded ``datasets.Image`` value (bytes, else its path)."""
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return io.BytesIO(value["bytes"])
        if value.get("path"):
            return value["path"]
    raise ValueError(f"not an encoded image ({type(value).__name__})")


def image_channels(value: Any) -> int:
    """1 when the undecoded image ``value`` is grey (by its PIL mode), else 3."""
    with PILImage.open(image_file(value)) as img:
        return 1 if img.mode in _GREY_MODES else 3


def guess_channels(dataset: Any, image_column: str) -> int:
    """1 when the feature's mode (else the first image's) is a grey mode, else 3."""
    mode = getattr(dataset.features[image_column], "mode", None)
    if mode is None:
        return image_channels(undecoded(dataset.select(range(1)), image_column, None)[0][image_column])
    return 1 if mode in _GREY_MODES else 3


def undecoded(dataset: Any, image_column: str, label_column: str | None) -> Any:
    """Only the two columns, images as raw ``{"bytes", "path"}`` (decoded by us, in the workers)."""
    datasets = import_datasets()
    keep = [image_column] + ([label_column] if label_column else [])
    return dataset.select_columns(keep).cast_column(image_column, datasets.Image(decode=False))


def decode_value(value: Any, size: int, channels: int, min_size: int) -> Tensor:
    """One undecoded image value -> ``uint8 (channels, size, size)`` as folder images are decoded
    (:func:`vicreg.data.decode_image`); raises on an unusable image."""
    return decode_image(image_file(value), size, channels=channels, min_size=min_size)


def spec_name(source: HFSource, split: str | None) -> str:
    """The spec with the split that applies (for messages and dataset names): ``hf:./set:train``."""
    return str(source) if source.split or not split else f"{source}:{split}"
