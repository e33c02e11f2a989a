"""Sources: every format read from files the tests write, by path and by name, and their errors."""

from __future__ import annotations

import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from tests.data.make_files import (
    cifar_images,
    save_image,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_mnist,
    write_stl10,
)
from vicreg.data import ImageDataset, channel_stats, find_dataset, has_splits, load, read_idx, resize_images
from vicreg.data import sources as sources_module
from vicreg.data.readers import read_idx_folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No VICREG_DATA, an empty user cache and no Debian folder: nothing is found unless a test puts it."""
    monkeypatch.delenv("VICREG_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sources_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    return tmp_path


# --- IDX -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    path = write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), a)
    np.testing.assert_array_equal(read_idx(path), a)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # float32 type code
    with pytest.raises(ValueError, match=r"bad.*magic"):
        read_idx(tmp_path / "bad")
    path = write_idx(tmp_path / "t", np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)
    (tmp_path / "notgz.gz").write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match=r"notgz\.gz"):
        read_idx(tmp_path / "notgz.gz")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_by_path(tmp_path, gz):
    truth = write_mnist(tmp_path / "m", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load(tmp_path / "m", split)
        images, labels = truth[prefix]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(images), 1, 28, 28)
        np.testing.assert_array_equal(data.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(data.labels.numpy(), labels.astype(np.int64))
        assert data.labels.dtype == torch.int64


# --- Fashion-MNIST by name ------------------------------------------------------------------------------


def test_fashion_mnist_by_name_from_vicreg_data(isolated, monkeypatch):
    truth = write_mnist(isolated / "mine" / "fashion-mnist")
    monkeypatch.setenv("VICREG_DATA", str(isolated / "mine"))
    data = load("fashion-mnist", download=False)
    np.testing.assert_array_equal(data.images[:, 0].numpy(), truth["train"][0])
    assert data.classes[0] == "T-shirt/top" and len(data.classes) == 10
    assert data.name == "fashion-mnist:train"
    assert len(load("Fashion_MNIST", "test", download=False)) == len(truth["t10k"][0])


def test_fashion_mnist_torchvision_layout_in_user_cache(isolated):
    truth = write_mnist(isolated / "cache" / "vicreg" / "FashionMNIST" / "raw", gz=False)
    data = load("fashion-mnist", download=False)
    np.testing.assert_array_equal(data.labels.numpy(), truth["train"][1])


def test_fashion_mnist_debian_location_and_search_order(isolated, monkeypatch):
    debian = isolated / "debian"
    write_mnist(debian, n_train=7)  # files directly in the folder, gzipped, like the Debian package
    monkeypatch.setattr(sources_module, "DEBIAN_FASHION_MNIST", debian)
    assert find_dataset("fashion-mnist", download=False) == debian
    assert len(load("fashion-mnist", download=False)) == 7
    # The user cache wins over the Debian folder, and $VICREG_DATA over both.
    write_mnist(isolated / "cache" / "vicreg" / "fashion-mnist", n_train=8)
    assert len(load("fashion-mnist", download=False)) == 8
    write_mnist(isolated / "env" / "FashionMNIST" / "raw", n_train=9)
    monkeypatch.setenv("VICREG_DATA", os.pathsep.join([str(isolated / "nothing"), str(isolated / "env")]))
    assert len(load("fashion-mnist", download=False)) == 9


def test_fashion_mnist_not_found_offline_says_how_to_get_it(isolated):
    with pytest.raises(FileNotFoundError) as info:
        load("fashion-mnist", download=False)
    message = str(info.value)
    assert "apt install dataset-fashion-mnist" in message and "VICREG_DATA" in message
    assert str(isolated / "cache" / "vicreg" / "fashion-mnist") in message


def test_failed_download_becomes_the_same_clear_error(isolated, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match=r"(?s)download into .* failed .*URLError.*apt install"):
        load("fashion-mnist")


def test_real_debian_fashion_mnist_when_installed():
    if not (sources_module.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed")
    data = read_idx_folder(sources_module.DEBIAN_FASHION_MNIST, "test")
    assert data.images.shape == (10000, 1, 28, 28) and data.labels.bincount().tolist() == [1000] * 10


# --- CIFAR -----------------------------------------------------------------------------------------------


def test_cifar10_by_path_and_by_name(isolated, monkeypatch):
    folder = write_cifar10(isolated / "root" / "cifar-10-batches-py", per_batch=4)
    train = load(folder)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    np.testing.assert_array_equal(train.images.numpy(), cifar_images(20))  # NCHW, rows in batch order
    assert train.labels.tolist()[:5] == [0, 1, 2, 3, 1]
    assert train.classes == tuple(f"class{j}" for j in range(10))
    test = load(folder, "test")
    np.testing.assert_array_equal(test.images.numpy(), cifar_images(4, offset=20))
    # A data root that holds the torchvision layout, as a path and through VICREG_DATA by name.
    assert len(load(isolated / "root")) == 20
    monkeypatch.setenv("VICREG_DATA", str(isolated / "root"))
    assert torch.equal(load("cifar10").images, train.images)


def test_cifar100_fine_labels(isolated):
    folder = write_cifar100(isolated / "cache" / "vicreg" / "cifar-100-python", n=6)
    data = load("CIFAR-100", "test", download=False)
    assert data.labels.tolist() == [j * 11 % 100 for j in range(6)]
    assert len(data.classes) == 100
    assert len(load(folder)) == 6


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = write_cifar10(tmp_path / "c")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(ValueError, match=r"data_batch_1.*refusing to load"):
        load(folder)
    assert not marker.exists()


# --- STL-10 ----------------------------------------------------------------------------------------------


def test_stl10_splits(isolated):
    truth = write_stl10(isolated / "cache" / "vicreg" / "stl10_binary")
    train = load("stl10", download=False)
    np.testing.assert_array_equal(train.images.numpy(), truth["train"])  # column-major files read right
    assert train.labels.tolist() == [0, 1, 2] and train.classes[0] == "stl0"
    unlabeled = load("stl10", "unlabeled", download=False)
    assert unlabeled.labels is None
    np.testing.assert_array_equal(unlabeled.images.numpy(), truth["unlabeled"])
    both = load("stl10", "train+unlabeled", download=False)
    assert both.labels.tolist() == [0, 1, 2, -1, -1, -1, -1] and len(both) == 7
    assert load("stl10", "test", size=48, download=False).images.shape == (2, 3, 48, 48)


# --- numpy -----------------------------------------------------------------------------------------------


def test_npy_channels_last_floats(tmp_path):
    a = np.random.default_rng(0).random((5, 8, 9, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", a)
    data = load(tmp_path / "x.npy")
    assert data.images.shape == (5, 3, 8, 9) and data.labels is None
    expected = np.round(a.transpose(0, 3, 1, 2) * 255).astype(np.uint8)
    np.testing.assert_array_equal(data.images.numpy(), expected)


def test_npz_with_labels_and_grey(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(6) % 2)
    data = load(tmp_path / "d.npz")
    assert data.images.shape == (6, 1, 10, 10) and data.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert load(tmp_path / "d.npz", channels=3).images.shape == (6, 3, 10, 10)


def test_numpy_errors_name_the_problem(tmp_path):
    np.save(tmp_path / "big.npy", np.full((2, 4, 4), 2.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load(tmp_path / "big.npy")
    np.save(tmp_path / "shape.npy", np.zeros((2, 5, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(2, 5, 4, 4\)"):
        load(tmp_path / "shape.npy")
    np.savez(tmp_path / "keys.npz", a=np.zeros((2, 4, 4)), b=np.zeros(2))
    with pytest.raises(ValueError, match="name it 'images'"):
        load(tmp_path / "keys.npz")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.npy"):
        load(tmp_path / "junk.npy")


# --- errors ------------------------------------------------------------------------------------------------


def test_wrong_path_unknown_format_unknown_split(tmp_path, isolated):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cifar11"):
        load("cifar11")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt.*unknown file format"):
        load(tmp_path / "notes.txt")
    folder = write_cifar10(tmp_path / "c")
    with pytest.raises(ValueError, match="unknown split 'unlabeled'"):
        load(folder, "unlabeled")
    with pytest.raises(ValueError, match="unknown dataset name"):
        find_dataset("imagenet")


def test_empty_folder_and_folder_without_size(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no image files under .*empty: found nothing"):
        load(tmp_path / "empty", size=8)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match=r"docs: found only 1 file\(s\) with other extensions"):
        load(tmp_path / "docs", size=8)
    save_image(tmp_path / "imgs" / "a.png")
    with pytest.raises(ValueError, match=r"imgs.*needs a size"):
        load(tmp_path / "imgs")


def test_several_datasets_in_one_root_is_ambiguous(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    write_stl10(tmp_path / "stl10_binary")
    with pytest.raises(ValueError, match="several datasets"):
        load(tmp_path)


# --- ImageDataset ----------------------------------------------------------------------------------------


def test_channel_stats_match_numpy():
    x = torch.randint(0, 256, (37, 3, 5, 6), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk_elements=200)  # several chunks
    a = x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, a.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, a.std(axis=(0, 2, 3)), rtol=1e-8)
    data = ImageDataset(x)
    assert data.mean == mean and data.std == std


def test_array_dataset_validation_and_channels():
    with pytest.raises(ValueError, match="uint8 tensor"):
        ImageDataset(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        ImageDataset.from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1])
    rgb = ImageDataset.from_arrays(np.stack([np.full((2, 2, 3), (255, 0, 0), np.uint8)] * 2))
    grey = rgb.with_channels(1)
    assert grey.images.shape == (2, 1, 2, 2) and int(grey.images[0, 0, 0, 0]) == 76  # PIL's L of pure red
    assert torch.equal(grey.with_channels(3).images[:, 1], grey.images[:, 0])
    sub = ImageDataset.from_arrays(np.zeros((4, 3, 3), np.uint8), [5, 6, 7, 8]).subset([3, 1])
    assert sub.labels.tolist() == [8, 6] and len(sub) == 2


def test_resize_images_keeps_the_centre_and_leaves_right_sized_images_alone():
    images = torch.zeros(3, 1, 8, 12, dtype=torch.uint8)
    images[..., :, 2:10] = 200  # the centre 8 x 8 square is bright, the two 2-column margins dark
    out = resize_images(images, 4)
    assert out.shape == (3, 1, 4, 4) and out.dtype == torch.uint8
    assert bool((out[..., 1:3] == 200).all()) and torch.equal(out, out.flip(-1))  # centred
    assert int(out.min()) > 150  # the dark margins were cropped away (squeezed in, the edges would be 75)
    square = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8)
    assert resize_images(square, 4) is square
    data = ImageDataset(images, torch.arange(3), ("a", "b", "c"), "wide")
    small = data.resized(4)
    assert torch.equal(small.images, out) and torch.equal(small.labels, data.labels)
    assert (small.classes, small.name) == (data.classes, data.name) and small.resized(4) is small


def test_has_splits_names_and_folders(tmp_path):
    assert has_splits("fashion-mnist") and has_splits("cifar10") and not has_splits("not-a-dataset")
    write_mnist(tmp_path / "mnist", n_train=4, n_test=2)
    assert has_splits(tmp_path / "mnist")
    (tmp_path / "pictures").mkdir()
    assert not has_splits(tmp_path / "pictures")
