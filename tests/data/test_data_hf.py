"""Hugging Face datasets: spec parsing, column discovery, the map-style loader, arrays, and per-rank streaming.

Every dataset is built here (``Dataset.from_dict`` with PIL images, ``save_to_disk`` into ``tmp_path``); nothing
touches the network (offline mode is forced without ``download``).
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

datasets = pytest.importorskip("datasets")

from tests.helpers import free_port  # noqa: E402
from vicreg.data import BadImageError, BadImageWarning, decode_image  # noqa: E402
from vicreg.data.hf import (  # noqa: E402
    HFSource,
    HFStreamLoader,
    find_columns,
    hf_loader,
    hf_splits,
    hf_stream_loader,
    is_hf_source,
    load_hf_images,
    open_hf_dataset,
    parse_hf_source,
)

N_TRAIN, N_TEST = 23, 5
CLASSES = ("cat", "dog", "eel")
SHAPES = ((12, 16), (20, 14))  # (H, W): two sizes, both sides >= 12


def _image(i: int, mode: str = "RGB") -> Image.Image:
    h, w = SHAPES[i % 2]
    rng = np.random.default_rng(i)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a).convert(mode)


def _features(mode: str = "RGB"):
    return datasets.Features(
        {
            "img": datasets.Image(),
            "label": datasets.ClassLabel(names=list(CLASSES)),
            "idx": datasets.Value("int64"),
            "caption": datasets.Value("string"),
        }
    )


def _split(start: int, n: int, mode: str = "RGB"):
    rows = range(start, start + n)
    return datasets.Dataset.from_dict(
        {
            "img": [_image(i, mode) for i in rows],
            "label": [i % 3 for i in rows],
            "idx": list(rows),
            "caption": [f"row {i}" for i in rows],
        },
        features=_features(mode),
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A DatasetDict (train: rows 0..22, test: rows 100..104) written with save_to_disk."""
    root = tmp_path_factory.mktemp("hf") / "set"
    datasets.disable_progress_bars()
    datasets.DatasetDict(train=_split(0, N_TRAIN), test=_split(100, N_TEST)).save_to_disk(str(root))
    return root


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path, monkeypatch):
    """Never read the user's Hugging Face cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _png(i: int) -> io.BytesIO:
    buf = io.BytesIO()
    _image(i).save(buf, format="PNG")
    buf.seek(0)
    return buf


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def _rows(loader, epochs=(0,), start_batch: int = 0) -> list[list[int]]:
    """The ``idx`` of every row of every batch (the loader reads ``idx`` as its label column)."""
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch, start_batch)
        out.extend(labels.tolist() for _, labels in loader)
    return out


# ---------------------------------------------------------------------------------------------- specs


def test_parse_specs(tmp_path):
    assert is_hf_source("hf:x") and is_hf_source("hf-stream:x") and not is_hf_source("cifar10")
    assert not is_hf_source(tmp_path)
    assert parse_hf_source("hf:owner/name") == HFSource("owner/name", None, False)
    assert parse_hf_source("hf:owner/name:test") == HFSource("owner/name", "test", False)
    assert parse_hf_source("hf-stream:./data/set:train+test") == HFSource("./data/set", "train+test", True)
    assert str(parse_hf_source("hf-stream:a/b:validation")) == "hf-stream:a/b:validation"
    odd = tmp_path / "set:v2"  # an existing path holding ':' is a path, not a split
    odd.mkdir()
    assert parse_hf_source(f"hf:{odd}") == HFSource(str(odd), None, False)
    assert parse_hf_source(f"hf:{odd}:test").split == "test"
    assert parse_hf_source("hf:C:/data/x").name == "C:/data/x"  # '/x' after ':' is not a split name
    with pytest.raises(ValueError, match="names no dataset"):
        parse_hf_source("hf:")
    with pytest.raises(ValueError, match="not a Hugging Face source"):
        parse_hf_source("cifar10")


# ---------------------------------------------------------------------------------------------- columns


def test_find_columns_discovers_and_overrides():
    f = _features()
    assert find_columns(f) == ("img", "label", CLASSES)
    assert find_columns(f, label_column="idx") == ("img", "idx", ())
    assert find_columns(datasets.Features({"img": datasets.Image()})) == ("img", None, ())
    two = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(), "y": datasets.ClassLabel(2)})
    assert find_columns(two) == ("image", "y", ("0", "1"))
    assert find_columns(two, data_column="mask")[0] == "mask"
    many = datasets.Features(
        {"img": datasets.Image(), "fine": datasets.ClassLabel(names=["a"]), "coarse": datasets.ClassLabel(names=["b"])}
    )
    with pytest.warns(UserWarning, match=r"several ClassLabel columns \(fine, coarse\); using 'fine'"):
        assert find_columns(many) == ("img", "fine", ("a",))
    assert find_columns(many, label_column="coarse") == ("img", "coarse", ("b",))


def test_find_columns_errors_name_the_columns():
    f = _features()
    with pytest.raises(ValueError, match=r"no column 'pic' \(--data-column\); the columns are img \(Image\), label"):
        find_columns(f, data_column="pic")
    with pytest.raises(ValueError, match="column 'caption' is Value, not an Image feature"):
        find_columns(f, data_column="caption")
    with pytest.raises(ValueError, match=r"no column 'y' \(--label-column\)"):
        find_columns(f, label_column="y")
    with pytest.raises(ValueError, match=r"class_encode_column\('caption'\)"):
        find_columns(f, label_column="caption")
    with pytest.raises(ValueError, match=r"no Image column; name one with --data-column \(the columns are x \(Value\)"):
        find_columns(datasets.Features({"x": datasets.Value("int64")}))
    with pytest.raises(ValueError, match=r"several image columns \(a, b\)"):
        find_columns(datasets.Features({"a": datasets.Image(), "b": datasets.Image()}))


# ---------------------------------------------------------------------------------------------- opening


def test_open_picks_the_split(saved):
    assert len(open_hf_dataset(f"hf:{saved}", "train")) == N_TRAIN
    assert len(open_hf_dataset(f"hf:{saved}", "test")) == N_TEST
    assert len(open_hf_dataset(f"hf:{saved}:test", "train")) == N_TEST  # the spec's split wins
    assert len(open_hf_dataset(f"hf:{saved}:train+test")) == N_TRAIN + N_TEST
    assert hf_splits(f"hf:{saved}") == ("train", "test")
    with pytest.raises(ValueError, match="no split 'validation'; the splits are train, test"):
        open_hf_dataset(f"hf:{saved}", "validation")
    with pytest.raises(ValueError, match="name a split, one of train, test"):
        open_hf_dataset(f"hf:{saved}", None)


def test_a_single_saved_dataset_serves_every_split(tmp_path):
    _split(0, 4).save_to_disk(str(tmp_path / "one"))
    assert hf_splits(f"hf:{tmp_path / 'one'}") == ()
    assert len(open_hf_dataset(f"hf:{tmp_path / 'one'}", "train")) == 4
    assert len(open_hf_dataset(f"hf:{tmp_path / 'one'}", "test")) == 4


@pytest.mark.parametrize("name", ["nobody-xyz/no-such-set", "/no/such/folder"])
def test_missing_offline_is_one_line(name):
    before = datasets.config.HF_HUB_OFFLINE
    with pytest.raises(FileNotFoundError) as e:
        open_hf_dataset(f"hf:{name}", "train")
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg and "--download" in msg and "\n" not in msg
    assert before == datasets.config.HF_HUB_OFFLINE  # the offline flag is restored


def test_a_hub_name_in_the_local_cache_loads_offline(tmp_path):
    """A Hub dataset in the cache (the layout load_dataset leaves: <owner>___<name>/default/<version>/<hash>)."""
    cache = tmp_path / "hf-cache"
    files = {}
    for split, ds in (("train", _split(0, 6)), ("test", _split(100, 2))):
        files[split] = str(tmp_path / f"{split}.parquet")
        ds.to_parquet(files[split])
    datasets.load_dataset("parquet", data_files=files, cache_dir=str(cache))
    shutil.move(cache / "parquet", cache / "me___tiny")
    (config,) = [p for p in (cache / "me___tiny").iterdir() if p.is_dir()]
    config.rename(cache / "me___tiny" / "default")
    for f in glob.glob(str(cache / "me___tiny" / "default" / "*" / "*" / "parquet-*.arrow")):
        os.rename(f, f.replace("parquet-", "tiny-"))
    data = load_hf_images("hf:me/tiny", "test", size=12)
    assert data.images.shape == (2, 3, 12, 12) and data.classes == CLASSES
    assert data.labels is not None and data.labels.tolist() == [100 % 3, 101 % 3]


def test_missing_datasets_names_the_extra(monkeypatch, saved):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'vicreg\[hf\]'"):
        open_hf_dataset(f"hf:{saved}", "train")


# ---------------------------------------------------------------------------------------------- map-style


def test_loader_batches_shapes_labels_and_pixels(saved):
    loader = hf_loader(f"hf:{saved}", 12, 4, shuffle=False, num_workers=0, rank=0, world_size=1)
    assert len(loader) == N_TRAIN // 4 and loader.source.classes == CLASSES
    batches = list(loader)
    assert len(batches) == N_TRAIN // 4
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 12, 12)
    assert labels is not None and labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 0]
    # decoded exactly as an image folder decodes the same image (shorter side resize + centre crop)
    for i in range(4):
        assert torch.equal(images[i], decode_image(_png(i), 12))  # type: ignore[arg-type]
    grey = hf_loader(f"hf:{saved}", 12, 4, channels=1, shuffle=False, num_workers=0, rank=0, world_size=1)
    assert next(iter(grey))[0].shape == (4, 1, 12, 12)


def test_decoding_in_a_worker_gives_the_same_batches(saved):
    kw = {"shuffle": True, "seed": 3, "rank": 0, "world_size": 1, "label_column": "idx"}
    in_process = _rows(hf_loader(f"hf:{saved}", 12, 5, num_workers=0, **kw))
    in_worker = _rows(hf_loader(f"hf:{saved}", 12, 5, num_workers=1, **kw))
    assert in_process == in_worker and len(in_process) == N_TRAIN // 5


def test_resume_mid_epoch_equals_the_uninterrupted_order(saved):
    loader = hf_loader(f"hf:{saved}", 12, 3, seed=7, num_workers=0, rank=0, world_size=1, label_column="idx")
    full = _rows(loader, epochs=(0, 1))
    per_epoch = len(loader)
    assert full[:per_epoch] != full[per_epoch:]  # each epoch has its own order
    loader.set_epoch(1, 4)
    resumed = [labels.tolist() for _, labels in loader]
    assert resumed == full[per_epoch + 4 :]


def test_rank_shards_are_disjoint_and_equal(saved):
    shards = [
        _rows(hf_loader(f"hf:{saved}", 12, 3, seed=1, num_workers=0, rank=r, world_size=2, label_column="idx"))
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == N_TRAIN // 6
    rows = [set(_flat(s)) for s in shards]
    assert not rows[0] & rows[1] and len(rows[0] | rows[1]) == N_TRAIN // 6 * 6


def test_grey_images_give_one_channel(tmp_path):
    _split(0, 4, mode="L").save_to_disk(str(tmp_path / "grey"))
    data = load_hf_images(f"hf:{tmp_path / 'grey'}", "train", size=12)
    assert data.channels == 1
    assert load_hf_images(f"hf:{tmp_path / 'grey'}", "train", size=12, channels=3).channels == 3


def test_load_hf_images(saved):
    data = load_hf_images(f"hf:{saved}", "test", size=12, num_workers=0)
    assert data.images.shape == (N_TEST, 3, 12, 12) and data.classes == CLASSES
    assert data.labels is not None and data.labels.tolist() == [i % 3 for i in range(100, 100 + N_TEST)]
    assert torch.equal(data.images[2], decode_image(_png(102), 12))  # type: ignore[arg-type]
    assert data.name == f"hf:{saved}:test"
    ids = load_hf_images(f"hf:{saved}:test", None, size=12, label_column="idx", num_workers=0)
    assert ids.labels is not None and ids.labels.tolist() == list(range(100, 100 + N_TEST)) and ids.classes == ()


def test_a_bad_image_is_skipped_with_a_warning(tmp_path):
    ds = _split(0, 4)
    rows = ds.cast_column("img", datasets.Image(decode=False)).to_dict()
    rows["img"][1] = {"bytes": b"not an image", "path": None}
    broken = datasets.Dataset.from_dict(rows, features=_features())
    broken.save_to_disk(str(tmp_path / "broken"))
    with pytest.warns(BadImageWarning, match=r"skipped 1 unusable image"):
        data = load_hf_images(f"hf:{tmp_path / 'broken'}", "train", size=12, label_column="idx", num_workers=0)
    assert data.labels is not None and data.labels.tolist() == [0, 2, 3]


def _broken(tmp_path: Path, bad_rows: dict[int, bytes]) -> Path:
    """Rows 0..7 saved with ``save_to_disk``; the rows of ``bad_rows`` hold those bytes (no path) instead."""
    rows = _split(0, 8).cast_column("img", datasets.Image(decode=False)).to_dict()
    for i, data in bad_rows.items():
        rows["img"][i] = {"bytes": data, "path": None}
    datasets.Dataset.from_dict(rows, features=_features()).save_to_disk(str(tmp_path / "broken"))
    return tmp_path / "broken"


def test_a_stream_reports_bad_images_as_the_folder_loader_does(tmp_path):
    root = _broken(tmp_path, {1: b"not an image", 5: b"nor this"})
    loader = hf_stream_loader(f"hf-stream:{root}", 12, 4, shuffle=False, num_workers=0, label_column="idx")
    with pytest.warns(BadImageWarning, match=r"skipped 2 unusable image.*each slot got another image of its batch"):
        assert len(_rows(loader)) == 2  # batches keep their size
    assert len(loader.bad_files) == 2  # rows without a path are told apart by their bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _rows(loader, epochs=(1,))  # nothing new in the next epoch: no second warning
    strict = hf_stream_loader(f"hf-stream:{root}", 12, 4, shuffle=False, num_workers=0, strict=True)
    with pytest.raises(BadImageError, match=r"unusable image file .*streamed row .*strict=True"):
        _rows(strict)


# ---------------------------------------------------------------------------------------------- streaming


def test_stream_one_process(saved):
    loader = hf_stream_loader(f"hf-stream:{saved}", 12, 4, seed=2, num_workers=0, label_column="idx", world_size=1)
    assert len(loader) == N_TRAIN // 4 and loader.source.classes == ()
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 12, 12) and labels is not None
    epochs = [_rows(loader, epochs=(e,)) for e in (0, 1)]
    for rows in epochs:
        assert len(rows) == len(loader) and all(len(b) == 4 for b in rows)
        flat = _flat(rows)
        assert sorted(flat) == list(range(N_TRAIN // 4 * 4))  # the first rows, each once
    assert epochs[0] != epochs[1]  # set_epoch reshuffles
    assert _rows(loader, epochs=(1,), start_batch=2) == epochs[1][2:]  # resume: reads and drops 2 batches


def test_stream_workers_rebatch_to_full_batches(saved):
    loader = hf_stream_loader(f"hf-stream:{saved}", 12, 4, shuffle=False, num_workers=2, world_size=1)
    loader.set_epoch(0)
    sizes = [images.shape[0] for images, _ in loader]
    assert sizes == [4] * (N_TRAIN // 4)


def _uneven_stream():
    """An iterable dataset of 2 shards (rows 0..6 and 7..10): split by shard, rank 0 holds 7 rows, rank 1 four."""
    ids = {0: range(7), 1: range(7, 11)}

    def gen(shards):
        for s in shards:
            for i in ids[s]:
                yield {"img": _image(i), "idx": i}

    features = datasets.Features({"img": datasets.Image(), "idx": datasets.Value("int64")})
    return datasets.IterableDataset.from_generator(gen, gen_kwargs={"shards": [0, 1]}, features=features)


def _stream_worker(rank: int, port: int, saved: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        datasets.disable_progress_bars()
        kw = {"label_column": "idx", "num_workers": 0}
        loader = hf_stream_loader(f"hf-stream:{saved}", 12, 3, seed=5, **kw)  # rank and world from the group
        result = {"len": len(loader), "epochs": [_rows(loader, epochs=(e,)) for e in (0, 1)]}
        unknown = HFStreamLoader(_uneven_stream(), 12, 2, shuffle=False, **kw)  # length unknown: all_reduce flag
        result["unknown"] = _rows(unknown)
        known = HFStreamLoader(_uneven_stream(), 12, 2, shuffle=False, num_examples=11, **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result["known"] = _rows(known)
        result["repeat_warnings"] = sum("starts its part again" in str(w.message) for w in caught)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_stream_two_processes_get_disjoint_equal_shards(saved, tmp_path):
    mp.spawn(_stream_worker, args=(free_port(), str(saved), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    per_rank = N_TRAIN // (2 * 3)
    assert ranks[0]["len"] == ranks[1]["len"] == per_rank
    for epoch in (0, 1):
        parts = [_flat(r["epochs"][epoch]) for r in ranks]
        assert len(ranks[0]["epochs"][epoch]) == len(ranks[1]["epochs"][epoch]) == per_rank
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == list(range(per_rank * 2 * 3))  # the first rows, each once
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]
    # unknown length, uneven parts (7 and 4 rows): both ranks stop after rank 1's 2 batches of 2
    assert [len(r["unknown"]) for r in ranks] == [2, 2]
    assert _flat(ranks[0]["unknown"]) == [0, 1, 2, 3] and _flat(ranks[1]["unknown"]) == [7, 8, 9, 10]
    # known length 11: 11 // (2 x 2) = 2 batches each, however uneven (no repeat needed here)
    assert [len(r["known"]) for r in ranks] == [2, 2] and [r["repeat_warnings"] for r in ranks] == [0, 0]


def test_stream_a_short_part_starts_again_to_keep_the_count():
    # one process standing in for rank 1 of 2: its part (rows 7..10) holds one batch of 3, but with
    # num_examples=18 every rank reads 18 // (2 x 3) = 3 batches, so it reads its part twice more
    loader = HFStreamLoader(
        _uneven_stream(), 12, 3, shuffle=False, num_examples=18, rank=1, world_size=2, num_workers=0, label_column="idx"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = _rows(loader)
    assert [str(w.message).count("holds 1 batches, fewer than the 3 every rank reads") for w in caught] == [1]
    assert rows == [[7, 8, 9]] * 3 and loader.repeated_batches == 2
