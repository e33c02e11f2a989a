"""Image folders: decoding of every format and mode, the scan, and bad files never stopping an epoch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.make_files import make_bad_files, save_image
from vicreg.data import (
    BadImageError,
    BadImageWarning,
    ImageFolderSource,
    decode_image,
    folder_loader,
    load,
    load_folder,
    scan_folder,
)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".tiff", ".JPEG"])
def test_every_format_decodes_to_a_fixed_size(tmp_path, ext):
    path = save_image(tmp_path / f"img{ext}", (40, 30))
    out = decode_image(path, 16)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    assert decode_image(path, 16, channels=1).shape == (1, 16, 16)


def test_resize_keeps_aspect_and_centre_crops(tmp_path):
    # 40 x 20: left quarter red, middle half green, right quarter blue -> the centre square is all green.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10, 0], a[:, 10:30, 1], a[:, 30:, 2] = 255, 255, 255
    Image.fromarray(a).save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png", 10)
    assert out.shape == (3, 10, 10)
    assert torch.equal(out[:, 3:7, 3:7], torch.tensor([0, 255, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4))


def test_large_jpeg_is_decoded_at_reduced_scale_to_the_same_picture(tmp_path):
    """The JPEG draft path (DCT scaling) must give the picture a full decode gives, up to resampling noise."""
    x = np.linspace(0, 255, 800)
    a = np.stack(np.broadcast_arrays(x[None, :], x[:600, None], 128 + 0 * x[None, :]), -1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "big.jpg", quality=95)
    fast = decode_image(tmp_path / "big.jpg", 32).float()
    with Image.open(tmp_path / "big.jpg") as img:
        full = Image.fromarray(np.asarray(img.convert("RGB")))
    reference = decode_image(_save_png(full, tmp_path / "big.png"), 32).float()
    assert (fast - reference).abs().mean() < 2.0


def _save_png(img, path):
    img.save(path)
    return path


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 x 20, left half red, right half blue; EXIF orientation 6 displays it rotated 90 degrees
    # clockwise (20 x 40, red on top). Centre square of the displayed picture: red above, blue below.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20, 0], a[:, 20:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "rot.jpg", 20).int()
    top, bottom = out[:, 3, 10], out[:, 16, 10]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


@pytest.mark.parametrize(
    ("mode", "color", "rgb"),
    [
        ("L", 100, (100, 100, 100)),
        ("LA", (100, 0), (100, 100, 100)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_modes_become_rgb_or_grey(tmp_path, mode, color, rgb):
    ext = ".jpg" if mode == "CMYK" else ".png" if mode != "CMYK" else ".tiff"
    path = save_image(tmp_path / f"m{ext}", (12, 12), mode=mode, color=color)
    out = decode_image(path, 8)
    assert out.shape == (3, 8, 8)
    assert (out[:, 4, 4].int() - torch.tensor(rgb)).abs().max() <= 3, out[:, 4, 4]
    assert decode_image(path, 8, channels=1).shape == (1, 8, 8)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (12, 12), 1)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's palette-transparency warning must not appear
        out = decode_image(tmp_path / "p.png", 8)
    assert out[:, 0, 0].tolist() == [200, 100, 50]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.zeros((10, 10), np.uint16)
    a[:, :5], a[:, 5:] = 65535, 32896  # 32896 / 257 = 128
    Image.fromarray(a).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
    out = decode_image(tmp_path / "deep.png", 10, channels=1)
    assert out[0, 5, 0] == 255 and out[0, 5, 9] == 128
    assert decode_image(tmp_path / "deep.png", 10).shape == (3, 10, 10)


def test_scan_labelled_recursive_and_unlabeled(tmp_path):
    for path in ("cats/a.png", "cats/deep/er/b.jpg", "dogs/c.webp", "empty/notes.txt", "dogs/d.TIFF"):
        if path.endswith(".txt"):
            (tmp_path / "tree" / path).parent.mkdir(parents=True)
            (tmp_path / "tree" / path).write_text("x")
        else:
            save_image(tmp_path / "tree" / path)
    files, labels, classes = scan_folder(tmp_path / "tree")
    assert classes == ("cats", "dogs")  # the folder without images is not a class
    assert [f.split("tree/")[1] for f in files] == [
        "cats/a.png",
        "cats/deep/er/b.jpg",
        "dogs/c.webp",
        "dogs/d.TIFF",
    ]
    assert labels == [0, 0, 1, 1]
    files, labels, classes = scan_folder(tmp_path / "tree", labeled=False)
    assert len(files) == 4 and labels is None and classes == ()
    save_image(tmp_path / "flat" / "x.bmp")
    save_image(tmp_path / "flat" / "y.png")
    assert scan_folder(tmp_path / "flat")[1] is None
    with pytest.raises(ValueError, match="labeled=True"):
        scan_folder(tmp_path / "flat", labeled=True)


def test_loose_images_next_to_class_folders_warn(tmp_path):
    save_image(tmp_path / "a" / "x.png")
    save_image(tmp_path / "stray.png")
    with pytest.warns(UserWarning, match=r"1 image file\(s\) directly in .*stray\.png"):
        files, _, _ = scan_folder(tmp_path)
    assert len(files) == 1


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderSource(tmp_path / "missing", 8)
    save_image(tmp_path / "f.png")
    with pytest.raises(NotADirectoryError, match=r"f\.png"):
        ImageFolderSource(tmp_path / "f.png", 8)
    with pytest.raises(ValueError, match="channels"):
        ImageFolderSource(tmp_path, 8, channels=2)


def _tree_with_bad_files(root, n_good=10):
    good = [save_image(root / "a" / f"g{i:02d}.png", (20, 16)) for i in range(n_good // 2)]
    good += [save_image(root / "b" / f"g{i:02d}.jpg", (20, 16)) for i in range(n_good - n_good // 2)]
    bad = make_bad_files(root / "a")
    bad.append(save_image(root / "b" / "tiny.png", (6, 20)))  # smaller than the size: rejected
    return good, bad


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_skipped_batches_keep_their_size_one_warning(tmp_path, workers):
    _, bad = _tree_with_bad_files(tmp_path)
    loader = folder_loader(tmp_path, 12, batch_size=4, num_workers=workers, world_size=1, rank=0)
    assert len(loader.source) == 16 and len(loader) == 4
    with pytest.warns(BadImageWarning) as record:
        batches = list(loader)
    assert len(record) == 1
    message = str(record[0].message)
    assert f"skipped {len(bad)} unusable image file(s)" in message
    assert message.count(str(tmp_path)) >= 5 and "and 1 more" in message  # the first five paths are named
    assert sorted(loader.bad_files) == sorted(str(p) for p in bad)
    for images, labels in batches:
        assert images.shape == (4, 3, 12, 12) and images.dtype == torch.uint8 and labels.shape == (4,)
    loader.set_epoch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing new in the next epoch: no second warning
        assert len(list(loader)) == 4


def test_every_good_file_is_read_and_slots_are_filled(tmp_path):
    good, _ = _tree_with_bad_files(tmp_path)
    loader = folder_loader(tmp_path, 12, batch_size=4, shuffle=False, num_workers=0, world_size=1, rank=0)
    with pytest.warns(BadImageWarning):
        used = torch.cat([b.used for b in loader.batches()])
    files = loader.source.files
    assert {files[i] for i in used.tolist()} == {str(p) for p in good}


def test_min_size_zero_keeps_small_images(tmp_path):
    save_image(tmp_path / "tiny.png", (6, 20))
    source = ImageFolderSource(tmp_path, 12, min_size=0)
    assert source[0].bad == () and source[0].image.shape == (3, 12, 12)


def test_strict_raises_with_the_path(tmp_path):
    _tree_with_bad_files(tmp_path)
    loader = folder_loader(tmp_path, 12, batch_size=16, shuffle=False, num_workers=0, strict=True, world_size=1)
    with pytest.raises(BadImageError, match=r"unusable image file .*a/\w+\.\w+: "):
        list(loader)


def test_no_readable_file_at_all(tmp_path):
    make_bad_files(tmp_path)
    source = ImageFolderSource(tmp_path, 8)
    with pytest.raises(BadImageError, match="none of the 5 image files"):
        source[0]


def test_load_folder_into_memory_leaves_bad_files_out(tmp_path):
    good, _ = _tree_with_bad_files(tmp_path)
    with pytest.warns(BadImageWarning):
        data = load(tmp_path, size=12, num_workers=0)
    assert len(data) == len(good) and data.images.shape[1:] == (3, 12, 12)
    assert data.classes == ("a", "b") and data.labels.tolist() == [0] * 5 + [1] * 5
    expected = torch.stack([decode_image(p, 12) for p in sorted(good)])
    assert torch.equal(data.images, expected)
    grey = load_folder(tmp_path / "b", 8, channels=1, min_size=0, num_workers=0)
    assert grey.images.shape == (6, 1, 8, 8) and grey.labels is None
