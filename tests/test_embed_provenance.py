"""Every embedding row knows its source (issue 26, point 6): an image folder decoded once leaves unreadable files
out (it never fills their rows with another file) and says which rows are there; every output format carries
that index. The CLI side (``vicreg embed`` on such a folder) is in tests/test_cli_reliability.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vicreg.data import BadImageWarning, ImageFolderSource, load_at_size
from vicreg.data.loaders import decode_folder
from vicreg.embed import index_path, write_embeddings


def _folder(root: Path) -> list[str]:
    """8 sorted names: 6 good PNGs (distinct constant images) and 2 unreadable files at positions 2 and 7."""
    root.mkdir()
    names = []
    for i in range(6):
        name = f"{i:02d}.png" if i < 2 else f"{i:02d}b.png"
        Image.fromarray(np.full((12, 12), 20 * i + 10, np.uint8)).save(root / name)
        names.append(name)
    (root / "01z.png").write_bytes(b"cut")  # sorts after 01.png
    (root / "zz.png").write_text("text")
    return sorted([*names, "01z.png", "zz.png"])


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_decoded_folder_leaves_bad_files_out_and_says_which_rows_are_there(tmp_path: Path, workers: int) -> None:
    names = _folder(tmp_path / "imgs")
    source = ImageFolderSource(tmp_path / "imgs", 8, channels=1)
    assert [Path(f).name for f in source.files] == names
    with pytest.warns(BadImageWarning, match=r"skipped 2 unusable.*each file is left out: its row is absent") as got:
        decoded = decode_folder(source, num_workers=workers)
    assert "slot" not in str(got[0].message)
    assert decoded.source_index.tolist() == [0, 1, 3, 4, 5, 6]
    assert [Path(p).name for p in decoded.skipped] == ["01z.png", "zz.png"]
    assert [Path(p).name for p in decoded.paths] == [names[i] for i in decoded.source_index.tolist()]
    # each row is its own file's image (a constant 20 * i + 10), none repeated in place of a bad file
    values = decoded.data.images.flatten(1).float().mean(1).round().tolist()
    assert values == [10.0, 30.0, 50.0, 70.0, 90.0, 110.0]


def test_load_at_size_hands_the_index_and_the_skipped_files_on(tmp_path: Path) -> None:
    _folder(tmp_path / "imgs")
    with pytest.warns(BadImageWarning):
        got = load_at_size(tmp_path / "imgs", "train", size=8, channels=1)
    assert got.source_index is not None and got.source_index.tolist() == [0, 1, 3, 4, 5, 6]
    assert len(got.skipped) == 2 and len(got.paths or []) == 6 == len(got.data)


def test_arrays_have_no_index_to_report(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", images=np.zeros((5, 1, 8, 8), np.uint8))
    got = load_at_size(tmp_path / "a.npz", "train", size=8, channels=1)
    assert got.source_index is None and got.skipped == ()


def test_every_format_carries_the_index(tmp_path: Path) -> None:
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    labels = np.array([0, 1, -1, 1])
    index = np.array([0, 2, 3, 7])
    paths = ["a.png", "c.png", "d.png", "h.png"]
    npy = write_embeddings(tmp_path / "e.npy", emb, labels, paths, index)
    assert index_path(npy) == tmp_path / "e.index.npy"
    assert np.load(npy).tolist() == emb.tolist() and np.load(index_path(npy)).tolist() == index.tolist()
    npz = np.load(write_embeddings(tmp_path / "e.npz", emb, labels, paths, index))
    assert npz["index"].tolist() == index.tolist() and npz["paths"].tolist() == paths
    assert "paths" not in np.load(write_embeddings(tmp_path / "f.npz", emb, labels))
    write_embeddings(tmp_path / "g.npy", emb, labels)  # no index given: the rows are the source's, in order
    assert np.load(tmp_path / "g.index.npy").tolist() == [0, 1, 2, 3]
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(write_embeddings(tmp_path / "e.parquet", emb, labels, paths, index)).to_pydict()
    assert table["index"] == index.tolist() and table["path"] == paths


def test_an_index_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    emb = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="3 embeddings but 2 index entries"):
        write_embeddings(tmp_path / "e.npz", emb, np.zeros(3), index=np.array([0, 1]))
    with pytest.raises(ValueError, match="3 embeddings"):
        write_embeddings(tmp_path / "e.npz", emb, np.zeros(3), paths=["a"])
    assert not list(tmp_path.iterdir())


def test_the_index_is_int64(tmp_path: Path) -> None:
    write_embeddings(tmp_path / "e.npy", np.zeros((2, 2), np.float32), np.zeros(2), index=torch.tensor([3, 9]).numpy())
    assert np.load(tmp_path / "e.index.npy").dtype == np.int64
