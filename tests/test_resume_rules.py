"""The data fingerprint (vicreg.data.fingerprint) and the resume table (vicreg.resume_rules.classify_changes)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vicreg.augment.pairs import TensorPair
from vicreg.config import TrainConfig, config_to_dict
from vicreg.data import FloatDataset, ImageDataset, ImageFolderSource
from vicreg.data.fingerprint import data_fingerprint, fingerprint_changes, sample_rows
from vicreg.resume_rules import ALLOWED, REFUSED, Change, classify_changes, describe, flatten, rule_for


def _images(n: int = 100, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    return ImageDataset(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), name="a.npz")


# ------------------------------------------------------------------------------------------------ fingerprint


def test_sample_rows_is_a_pure_function_of_its_arguments() -> None:
    assert sample_rows(1000) == sample_rows(1000)
    assert len(set(sample_rows(1000))) == 64 and sample_rows(1000) == sorted(sample_rows(1000))
    assert sample_rows(10) == list(range(10))
    assert sample_rows(1000, seed=1) != sample_rows(1000)


def test_fingerprint_of_in_memory_images() -> None:
    data = _images()
    fp = data_fingerprint(data)
    assert fp["source"] == "a.npz" and fp["rows"] == 100 and fp["shape"] == [1, 8, 8] and fp["dtype"] == "uint8"
    assert fp["sample"] == 64 and len(fp["sample_hash"]) == 64
    assert data_fingerprint(_images()) == fp  # deterministic
    # the naive reference: SHA-256 over the sampled rows' bytes, after their shape and dtype
    rows = data.images[sample_rows(100)].contiguous()
    ref = hashlib.sha256(str((tuple(rows.shape), str(rows.dtype))).encode() + rows.numpy().tobytes()).hexdigest()
    assert fp["sample_hash"] == ref


def test_one_changed_sampled_row_changes_the_hash_and_a_moved_file_does_not_count() -> None:
    data = _images()
    fp = data_fingerprint(data)
    changed = data.images.clone()
    changed[sample_rows(100)[3], 0, 0, 0] ^= 1
    fp2 = data_fingerprint(ImageDataset(changed, name="a.npz"))
    assert fingerprint_changes(fp, fp2) == [("sample_hash", fp["sample_hash"], fp2["sample_hash"])]
    moved = data_fingerprint(ImageDataset(data.images, name="elsewhere/a.npz"))
    assert moved["source"] != fp["source"] and fingerprint_changes(fp, moved) == []
    fewer = data_fingerprint(ImageDataset(data.images[:96], name="a.npz"))
    assert [k for k, _, _ in fingerprint_changes(fp, fewer)] == ["rows", "sample_hash"]


def test_fingerprint_of_float_rows_pairs_and_tensors() -> None:
    x = torch.randn(50, 3, 20)
    fp = data_fingerprint(FloatDataset(x, name="s.npz:train"))
    assert (fp["rows"], fp["shape"], fp["dtype"]) == (50, [3, 20], "float32")
    pair = data_fingerprint(TensorPair(x, torch.zeros(50, 5)))
    assert pair["shape"] == [[3, 20], [5]] and pair["dtype"] == "float32,float32"
    assert data_fingerprint(x)["sample_hash"] == fp["sample_hash"]  # the rows, whatever holds them


def test_fingerprint_of_an_image_folder_hashes_files_not_decodes(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(5):
        Image.fromarray(np.full((20, 20, 3), i * 40, np.uint8)).save(root / f"{i}.png")
    fp = data_fingerprint(ImageFolderSource(root, 16))
    assert (fp["source"], fp["rows"], fp["shape"], fp["sample"]) == (str(root), 5, [3, 16, 16], 5)
    moved = tmp_path / "moved"
    root.rename(moved)
    assert fingerprint_changes(fp, data_fingerprint(ImageFolderSource(moved, 16))) == []
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(moved / "2.png")
    assert [k for k, _, _ in fingerprint_changes(fp, data_fingerprint(ImageFolderSource(moved, 16)))] == ["sample_hash"]
    assert data_fingerprint(ImageFolderSource(moved, 32))["shape"] == [3, 32, 32]


def test_other_datasets_get_name_and_length_only() -> None:
    fp = data_fingerprint(list(range(7)), source="hf:x")
    assert fp == {"source": "hf:x", "rows": 7, "shape": [], "dtype": "", "sample": 0, "sample_hash": None}
    assert fingerprint_changes(fp, {**fp, "sample_hash": "ab"}) == []


# ------------------------------------------------------------------------------------------------ resume table


def _cfg(**overrides: object) -> dict:
    return config_to_dict(dataclasses.replace(TrainConfig(), **overrides))  # type: ignore[arg-type]


def test_every_config_field_is_placed_in_the_table() -> None:
    """A new TrainConfig field must be decided on (refused or allowed), not fall through to a default."""
    for field in flatten(config_to_dict(TrainConfig())):
        top = field.split(".")[0]
        assert top in REFUSED or top in ALLOWED or field in ALLOWED or field in REFUSED, field
    assert not set(REFUSED) & set(ALLOWED)
    assert rule_for("optim.base_lr") == "refused" and rule_for("max_steps") == "allowed"
    assert rule_for("something_new") == "refused"


def test_identical_configs_and_data_give_no_change() -> None:
    fp = data_fingerprint(_images())
    assert classify_changes(_cfg(), _cfg(), fp, dict(fp)) == ((), ())


def test_the_issue_cases_are_refused_listing_only_what_differs() -> None:
    old = _cfg()
    new = config_to_dict(
        dataclasses.replace(
            TrainConfig(), seed=3, optim=dataclasses.replace(TrainConfig().optim, base_lr=5.0), max_steps=99
        )
    )
    refused, announced = classify_changes(old, new, None, None)
    assert refused == (Change("optim.base_lr", 0.2, 5.0), Change("seed", 0, 3))
    assert announced == (Change("max_steps", None, 99),)
    assert describe(refused) == "optim.base_lr 0.2 -> 5.0, seed 0 -> 3"


@pytest.mark.parametrize(
    ("overrides", "verdict"),
    [
        ({"batch_size": 128}, "refused"),
        ({"precision": "bf16"}, "refused"),
        ({"modality": "table"}, "refused"),
        ({"epochs": 200}, "allowed"),
        ({"budget_minutes": 30.0}, "allowed"),
        ({"ckpt_every": 10, "log_every": 5}, "allowed"),
        ({"workers": 0, "device": "cpu", "progress": False}, "allowed"),
        ({"data": "/moved/data.npz"}, "allowed"),
    ],
)
def test_table_verdicts(overrides: dict, verdict: str) -> None:
    refused, announced = classify_changes(_cfg(), _cfg(**overrides), None, None)
    found = refused if verdict == "refused" else announced
    assert {c.field for c in found} == set(overrides) and not (announced if verdict == "refused" else refused)


def test_model_and_view_sections_are_refused_field_by_field() -> None:
    base = TrainConfig()
    new = dataclasses.replace(base, model=dataclasses.replace(base.model, width=8))
    refused, _ = classify_changes(config_to_dict(base), config_to_dict(new), None, None)
    assert refused == (Change("model.width", 32, 8),)


def test_other_data_is_refused_unless_asked_for() -> None:
    fp, other = data_fingerprint(_images()), data_fingerprint(_images(n=120, seed=1))
    refused, announced = classify_changes(_cfg(), _cfg(), fp, other)
    assert [c.field for c in refused] == ["data.rows", "data.sample_hash"] and announced == ()
    assert refused[0] == Change("data.rows", 100, 120)
    assert len(refused[1].old) == 12  # hashes shortened for the message
    refused, announced = classify_changes(_cfg(), _cfg(), fp, other, new_data=True)
    assert refused == () and [c.field for c in announced] == ["data.rows", "data.sample_hash"]


def test_an_older_checkpoint_without_fingerprint_or_fields_still_resumes() -> None:
    old = _cfg()
    del old["strict_data"]
    del old["optim"]["lars_clip"]
    refused, announced = classify_changes(old, _cfg(), None, data_fingerprint(_images()))
    assert refused == ()
    assert {c.field for c in announced} == {"strict_data", "optim.lars_clip", "data.fingerprint"}
    assert all(c.old == "(not recorded)" for c in announced)
