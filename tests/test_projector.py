"""TensorBoard's projector files: the config names tensors, metadata and sprite that exist and agree with the
embeddings, labels and thumbnails given; a subset above the cap; other tags kept; sprites within 8192 px."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from tests.helpers import free_port
from vicreg.projector import SPRITE_LIMIT, sprite_cell, write_projector


def _config(path: Path) -> ProjectorConfig:
    config = ProjectorConfig()
    text_format.Parse(path.read_text(), config)
    return config


def _tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_projector_files_exist_and_agree_with_the_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 7)).astype(np.float32)
    labels = [f"class {i % 3}" for i in range(50)]
    thumbs = rng.integers(0, 256, (50, 1, 10, 12), dtype=np.uint8)
    config_path = write_projector(tmp_path, emb, labels, thumbnails=thumbs, names=[f"img{i}.png" for i in range(50)])
    assert config_path == tmp_path / "projector_config.pbtxt"
    (info,) = _config(config_path).embeddings
    assert info.tensor_name == "representation:00000"
    folder = tmp_path / "00000" / "representation"
    for name in ("tensors.tsv", "metadata.tsv", "sprite.png"):
        assert (folder / name).is_file()
    assert (tmp_path / info.tensor_path, tmp_path / info.metadata_path) == (
        folder / "tensors.tsv",
        folder / "metadata.tsv",
    )
    assert tmp_path / info.sprite.image_path == folder / "sprite.png"
    assert list(info.sprite.single_image_dim) == [12, 10]  # width, height
    assert np.allclose(np.array(_tsv(folder / "tensors.tsv"), dtype=np.float32), emb)
    meta = _tsv(folder / "metadata.tsv")
    assert meta[0] == ["index", "label", "name"] and len(meta) == 51
    assert meta[8] == ["7", "class 1", "img7.png"]
    side = math.ceil(math.sqrt(50))
    sprite = Image.open(folder / "sprite.png")
    assert sprite.size == (side * 12, side * 12)  # add_embedding pads the grid to a square
    cell = np.asarray(sprite.convert("L"))[10:20, 12:24]  # row 1, column 1: thumbnail side + 1 = 9
    assert np.abs(cell.astype(int) - thumbs[side + 1, 0]).max() <= 1


def test_labels_only_write_one_column_without_header_and_other_tags_are_kept(tmp_path: Path) -> None:
    emb = np.random.default_rng(1).normal(size=(9, 3))
    write_projector(tmp_path, emb, None, tag="expander")
    write_projector(tmp_path, emb, np.arange(9) % 2, tag="representation")
    write_projector(tmp_path, emb * 2, np.arange(9) % 2, tag="representation")  # replaces, does not duplicate
    names = [e.tensor_name for e in _config(tmp_path / "projector_config.pbtxt").embeddings]
    assert sorted(names) == ["expander:00000", "representation:00000"]
    assert _tsv(tmp_path / "00000" / "expander" / "metadata.tsv") == [[str(i)] for i in range(9)]
    rows = np.array(_tsv(tmp_path / "00000" / "representation" / "tensors.tsv"), dtype=float)
    assert np.allclose(rows, emb * 2, atol=1e-6)


def test_a_seeded_subset_above_the_cap_keeps_the_original_row_numbers(tmp_path: Path) -> None:
    emb = np.arange(200, dtype=np.float32).reshape(100, 2)
    write_projector(tmp_path / "a", emb, np.arange(100), max_points=10, seed=5)
    write_projector(tmp_path / "b", emb, np.arange(100), max_points=10, seed=5)
    meta = _tsv(tmp_path / "a" / "00000" / "representation" / "metadata.tsv")[1:]
    assert len(meta) == 10 and meta == _tsv(tmp_path / "b" / "00000" / "representation" / "metadata.tsv")[1:]
    rows = np.array(_tsv(tmp_path / "a" / "00000" / "representation" / "tensors.tsv"), dtype=float)
    assert np.array_equal(rows[:, 0] / 2, [int(i) for i, _ in meta])  # each row is the row its index names


def test_sprite_cells_shrink_so_the_sprite_fits_the_projector() -> None:
    assert sprite_cell(100, 28, 28) == (28, 28)
    h, w = sprite_cell(60_000, 32, 64)
    assert math.ceil(math.sqrt(60_000)) * max(h, w) <= SPRITE_LIMIT and abs(w - 2 * h) <= 1


def test_tall_thumbnails_are_padded_to_square_cells(tmp_path: Path) -> None:
    """torch's sprite grid assumes width >= height; a tall picture is padded at the sides, not cropped."""
    thumbs = np.full((5, 3, 12, 6), 200, dtype=np.uint8)
    write_projector(tmp_path, np.eye(5), thumbnails=thumbs)
    (info,) = _config(tmp_path / "projector_config.pbtxt").embeddings
    assert list(info.sprite.single_image_dim) == [12, 12]
    sprite = np.asarray(Image.open(tmp_path / "00000" / "representation" / "sprite.png").convert("L"))
    assert (sprite[:12, 3:9] == 200).all() and (sprite[:12, :3] == 0).all()


def test_bad_inputs_are_refused_in_one_line(tmp_path: Path) -> None:
    emb = np.zeros((4, 2))
    with pytest.raises(ValueError, match="labels has 3 entries for 4 embeddings"):
        write_projector(tmp_path, emb, [0, 1, 2])
    with pytest.raises(ValueError, match=r"uint8 \(N, C, H, W\)"):
        write_projector(tmp_path, emb, thumbnails=np.zeros((4, 1, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        write_projector(tmp_path, np.zeros(4))


@pytest.mark.slow
def test_tensorboard_serves_the_projector_from_the_log_dir(tmp_path: Path) -> None:
    """``tensorboard --logdir DIR``: the Projector tab is enabled and lists the embedding with its sprite."""
    rng = np.random.default_rng(0)
    write_projector(tmp_path, rng.normal(size=(30, 5)), [str(i % 3) for i in range(30)],
                    thumbnails=rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8))  # fmt: skip
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the server and the plugin scan the folder in the background: ask until they have
        info = _get_json(f"http://127.0.0.1:{port}/data/plugin/projector/info?run=.", server, lambda d: d["embeddings"])
        _get_json(f"http://127.0.0.1:{port}/data/plugins_listing", server, lambda d: d["projector"]["enabled"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    (embedding,) = info["embeddings"]
    assert embedding["tensorShape"] == [30, 5] and embedding["sprite"]["singleImageDim"] == [8, 8]


def _get_json(
    url: str, server: subprocess.Popen[bytes], ready: Callable[[dict], object], deadline_s: float = 600.0
) -> dict:
    """GET ``url`` until the server answers JSON that is ``ready``; the deadline only guards against a server that
    never gets there."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                got = json.loads(reply.read())
            if ready(got):
                return got
        except (OSError, ValueError, KeyError):
            if server.poll() is not None:
                raise
        assert time.monotonic() < end, f"no answer from {url} within {deadline_s} s"
        time.sleep(0.5)
