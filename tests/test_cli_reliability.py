"""Issue 26 through the command line: surprise overwrites, output suffixes, special files, link loops, cut and
impossible arrays, damaged archives, text columns, errors inside loader workers, embedding rows that keep their
source, warnings in the CLI's words, caps that are said, a C locale.

One table (:data:`CASES`): each case runs ``vicreg ...`` in-process through ``cli.main`` (:func:`run_cli`) on
one tiny trained run and checks the exit status, the one line, and what is (or is not) on disk. The C locale
needs a real process: its case runs the console script with ``LC_ALL=C`` and ``PYTHONIOENCODING=ascii``.
tests/test_cli_errors.py keeps the earlier table of bad inputs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npformat
from PIL import Image

from tests.helpers import CliResult, run_cli, run_cli_process, tiny_config
from vicreg.checkpoint import read_backbone_spec, write_backbone
from vicreg.cli import cli_words, describe_error
from vicreg.export import export_encoder
from vicreg.models import EncoderSpec
from vicreg.train import train

FAST_EVAL = ["--probe-epochs", "2", "--k", "5", "--fractions", "0.5", "--no-baselines", "--device", "cpu"]
FIFO = hasattr(os, "mkfifo")


@dataclass
class World:
    """One tiny trained run (1-channel 16 px images, small CNN) and a scratch folder per case."""

    run: Path
    data: Path
    tmp: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rel")
    cfg = tiny_config(root, epochs=1, knn_every=0)
    train(cfg)
    return Path(cfg.out), Path(cfg.data)


@pytest.fixture
def world(trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.delenv("VICREG_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)  # each case gets its own copy: no case sees another's files
    return World(run, trained[1], tmp_path)


def _one_line(done: CliResult, command: str, *words: str) -> str:
    """The command failed with one line ``vicreg <command>: ...`` naming ``words``, without a traceback."""
    err = done.stderr.strip()
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"vicreg {command}: "), err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    return err


def _ok(done: CliResult) -> CliResult:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _pngs(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for i in range(start, start + n):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(paths[-1])
    return paths


def _npy_header(path: Path, shape: tuple[int, ...], payload: bytes) -> Path:
    with open(path, "wb") as f:
        npformat.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        f.write(payload)
    return path


def _other_npz(path: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(5)
    np.savez(path, images=rng.integers(0, 255, (n, 1, 16, 16), dtype=np.uint8), labels=np.arange(n) % 2)
    return path


def _fifo(path: Path) -> Path:
    if not FIFO:
        pytest.skip("no named pipes here")
    os.mkfifo(path)
    return path


# ------------------------------------------------------------------------------------------------ overwrites


def export_default_goes_into_the_run_and_replaces_only_itself(w: World) -> None:
    done = _ok(run_cli("export", w.run))
    target = w.run / "export" / "backbone.safetensors"
    assert target.is_file() and str(target) in done.stdout
    assert not (w.tmp / "backbone.safetensors").exists()  # never the folder the command runs from
    _ok(run_cli("export", w.run))  # an earlier export of the same run: replaced


def export_refuses_a_users_file(w: World) -> None:
    mine = w.tmp / "important.pt"
    mine.write_bytes(b"my thesis")
    _one_line(run_cli("export", w.run, "--out", mine), "export", "important.pt", "--force", "not an export")
    assert mine.read_bytes() == b"my thesis"


def export_force_replaces_a_users_file(w: World) -> None:
    mine = w.tmp / "important.pt"
    mine.write_bytes(b"my thesis")
    _ok(run_cli("export", w.run, "--out", mine, "--force"))
    assert read_backbone_spec(mine) is not None


def export_refuses_another_runs_backbone(w: World) -> None:
    other = w.tmp / "other_run"
    shutil.copytree(w.run, other)  # the same architecture: only the folder tells them apart
    theirs = other / "backbone.safetensors"
    before = theirs.read_bytes()
    _one_line(run_cli("export", w.run, "--out", theirs), "export", "another run folder", "--force")
    assert theirs.read_bytes() == before


def export_refuses_an_export_of_another_encoder(w: World) -> None:
    spec = EncoderSpec("mlp", {"in_channels": 3, "width": 8, "depth": 2}, 8, "table", (3,), (0.0,) * 3, (1.0,) * 3)
    other = write_backbone(spec.build().state_dict(), spec, w.tmp / "enc.safetensors")
    before = other.read_bytes()
    _one_line(run_cli("export", w.run, "--out", other), "export", "another encoder", "mlp")
    assert other.read_bytes() == before


def export_never_replaces_a_folder_of_other_files(w: World) -> None:
    folder = w.tmp / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("mine")
    _one_line(run_cli("export", w.run, "--out", folder, "--force"), "export", "not an earlier hf export")
    assert [p.name for p in folder.iterdir()] == ["todo.txt"]


def eval_on_other_data_keeps_the_runs_own_result(w: World) -> None:
    own = w.run / "eval.json"
    own.write_text('{"mine": true}')
    other = _other_npz(w.tmp / "street.npz")
    done = _ok(run_cli("eval", w.run, "--data", other, *FAST_EVAL))
    written = w.run / "eval-street.json"
    assert written.is_file() and f"wrote {written}" in done.stdout
    assert json.loads(written.read_text())["data"]["source"] == str(other)
    assert own.read_text() == '{"mine": true}'


# ------------------------------------------------------------------------------------------------ suffixes


def eval_out_with_a_suffix_it_cannot_write(w: World) -> None:
    _one_line(run_cli("eval", w.run, "--out", w.tmp / "result.txt", *FAST_EVAL), "eval", "result.txt", ".json")
    assert not (w.run / "features").exists() or not any((w.run / "features").iterdir())  # no work was done


def eval_out_that_is_a_folder(w: World) -> None:
    (w.tmp / "res.json").mkdir()
    _one_line(run_cli("eval", w.run, "--out", w.tmp / "res.json", *FAST_EVAL), "eval", "is a folder")


def embed_out_with_a_suffix_it_cannot_write(w: World) -> None:
    _one_line(run_cli("embed", w.run, "--out", w.tmp / "e.csv"), "embed", "e.csv", ".npy, .npz, .parquet")


def neighbors_out_with_a_suffix_matplotlib_cannot_write(w: World) -> None:
    _one_line(run_cli("neighbors", w.run, "--out", w.tmp / "n.xyz"), "neighbors", "n.xyz", ".png", ".pdf")
    assert not (w.tmp / "n.csv").exists()


def neighbors_picture_named_csv_on_an_image_run(w: World) -> None:
    _one_line(run_cli("neighbors", w.run, "--out", w.tmp / "n.csv"), "neighbors", "draws a picture", ".png")


def neighbors_writes_other_picture_formats(w: World) -> None:
    _ok(run_cli("neighbors", w.run, "--out", w.tmp / "n.svg", "--k", "3"))
    assert (w.tmp / "n.svg").read_text().lstrip().startswith("<?xml") and (w.tmp / "n.csv").is_file()


def export_out_with_a_suffix_no_format_has(w: World) -> None:
    _one_line(run_cli("export", w.run, "--out", w.tmp / "b.zip"), "export", "b.zip", ".safetensors")


def export_file_name_that_is_a_folder(w: World) -> None:
    (w.tmp / "b.safetensors").mkdir()
    _one_line(run_cli("export", w.run, "--out", w.tmp / "b.safetensors"), "export", "is a folder")


# ------------------------------------------------------------------------------------------------ special files


def config_given_a_folder(w: World) -> None:
    _one_line(run_cli("train", "--config", w.tmp), "train", "is a folder, not a YAML config file")


def config_given_a_pipe(w: World) -> None:
    pipe = _fifo(w.tmp / "cfg")
    _one_line(run_cli("train", "--config", pipe), "train", "named pipe (FIFO), not a YAML config file")


def export_out_that_is_a_pipe(w: World) -> None:
    pipe = _fifo(w.tmp / "b.pt")
    _one_line(run_cli("export", w.run, "--out", pipe, "--force"), "export", "named pipe (FIFO)")


def eval_data_that_is_a_device(w: World) -> None:
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    _one_line(run_cli("eval", w.run, "--data", "/dev/null", *FAST_EVAL), "eval", "character device")


# ------------------------------------------------------------------------------------------------ odd data


def embed_counts_a_folder_behind_a_link_loop_once(w: World) -> None:
    root = w.tmp / "photos"
    _pngs(root / "2024", 6)
    (root / "2024" / "up").symlink_to("..")
    (root / "again").symlink_to("2024")
    done = _ok(run_cli("embed", w.run, "--data", root, "--out", w.tmp / "e.npz"))
    assert "(6 x " in done.stdout, done.stdout
    assert len(np.load(w.tmp / "e.npz")["paths"]) == 6


def embed_skips_a_file_link_that_loops(w: World) -> None:
    root = w.tmp / "imgs"
    _pngs(root, 5)
    (root / "zz_loop.png").symlink_to("zz_loop.png")
    done = _ok(run_cli("embed", w.run, "--data", root, "--out", w.tmp / "e.npy"))
    assert "5 rows written; 1 unreadable file(s) skipped" in done.stdout, done.stdout
    assert "zz_loop.png" in done.stderr


def eval_data_cut_short(w: World) -> None:
    whole = w.tmp / "whole.npy"
    np.save(whole, np.zeros((100, 1, 16, 16), np.uint8))
    cut = w.tmp / "cut.npy"
    cut.write_bytes(whole.read_bytes()[:1000])
    _one_line(run_cli("eval", w.run, "--data", cut, *FAST_EVAL), "eval", "cut.npy is cut short")


def embed_data_claiming_an_impossible_size(w: World) -> None:
    huge = _npy_header(w.tmp / "huge.npy", (10**6, 1, 512, 512), b"\0" * 100)
    _one_line(run_cli("embed", w.run, "--data", huge, "--out", w.tmp / "e.npy"), "embed", "GiB", "only 100 bytes")
    assert not (w.tmp / "e.npy").exists()


def eval_data_in_a_damaged_archive(w: World) -> None:
    good = _other_npz(w.tmp / "good.npz")
    broken = w.tmp / "broken.npz"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line(run_cli("eval", w.run, "--data", broken, *FAST_EVAL), "eval", "broken.npz")


def table_with_a_text_column(w: World) -> None:
    text = w.tmp / "text.npz"
    np.savez(text, x=np.array([["1.5", "2", "red"], ["3", "4", "blue"]] * 20))
    args = ["--modality", "table", "--model.backbone", "mlp", "--device", "cpu", "--batch-size", "8"]
    _one_line(run_cli("train", "--data", text, "--out", w.tmp / "t", *args), "train", "column 2", "holds text")


def worker_errors_are_one_line_with_workers_on(w: World) -> None:
    junk = w.tmp / "junk"
    junk.mkdir()
    for i in range(4):
        (junk / f"{i}.png").write_bytes(b"not an image")
    done = run_cli("embed", w.run, "--data", junk, "--out", w.tmp / "e.npy")
    err = _one_line(done, "embed", "none of the 4 image files")
    assert "Original Traceback" not in err and "DataLoader worker" not in err


# ------------------------------------------------------------------------------------------------ provenance


def _folder_with_bad_files(w: World) -> tuple[Path, list[Path]]:
    root = w.tmp / "mixed"
    good = _pngs(root, 6)
    (root / "002b.png").write_bytes(b"not an image")  # sorts between 002 and 003
    (root / "zz.png").write_text("neither")
    return root, good


def embed_npy_gets_an_index_that_lines_up_with_the_files(w: World) -> None:
    root, good = _folder_with_bad_files(w)
    done = _ok(run_cli("embed", w.run, "--data", root, "--out", w.tmp / "e.npy"))
    emb, index = np.load(w.tmp / "e.npy"), np.load(w.tmp / "e.index.npy")
    assert emb.shape[0] == 6 and index.tolist() == [0, 1, 2, 4, 5, 6]  # 3 (002b) and 7 (zz) left out
    assert "6 rows written; 2 unreadable file(s) skipped (their rows are absent; see the index)" in done.stdout
    # each row is the embedding of its own file: embed the good files alone and compare
    clean = w.tmp / "clean"
    clean.mkdir()
    for p in good:
        shutil.copy(p, clean / p.name)
    _ok(run_cli("embed", w.run, "--data", clean, "--out", w.tmp / "c.npy"))
    np.testing.assert_allclose(emb, np.load(w.tmp / "c.npy"), rtol=1e-5, atol=1e-5)


def embed_npz_carries_index_and_paths(w: World) -> None:
    root, good = _folder_with_bad_files(w)
    _ok(run_cli("embed", w.run, "--data", root, "--out", w.tmp / "e.npz"))
    got = np.load(w.tmp / "e.npz")
    assert [Path(p).name for p in got["paths"]] == [p.name for p in good]
    assert got["index"].tolist() == [0, 1, 2, 4, 5, 6] and got["embeddings"].shape[0] == 6


def embed_of_arrays_has_the_identity_index(w: World) -> None:
    done = _ok(run_cli("embed", w.run, "--out", w.tmp / "e.npy"))
    assert np.load(w.tmp / "e.index.npy").tolist() == list(range(96))
    assert "skipped" not in done.stdout


# ------------------------------------------------------------------------------------------------ CLI words


def warnings_name_cli_flags_and_no_source_lines(w: World) -> None:
    root, _ = _folder_with_bad_files(w)
    done = _ok(run_cli("embed", w.run, "--data", root, "--out", w.tmp / "e.npy"))
    warning = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("vicreg embed: warning: skipped 2 unusable"), done.stderr
    assert "left out" in warning[0] and "slot" not in warning[0]
    for python_words in ("loader.bad_files", "strict=True", "labeled=", ".py:", "warnings.warn"):
        assert python_words not in done.stderr, done.stderr


def loose_files_beside_class_folders_are_explained_in_folders(w: World) -> None:
    root = w.tmp / "classes"
    _pngs(root / "cats", 3)
    _pngs(root / "dogs", 3, start=10)
    _pngs(root, 2, start=20)  # loose files directly in the root
    done = _ok(run_cli("embed", w.run, "--data", root, "--out", w.tmp / "e.npy"))
    assert "vicreg embed: warning: 2 image file(s) directly in" in done.stderr, done.stderr
    assert "class sub-folder" in done.stderr and "labeled=" not in done.stderr


def strict_data_errors_name_the_flag(w: World) -> None:
    text = "unusable image file x.png: truncated (strict=True; remove or fix the file, or pass strict=False to skip"
    text += " such files with a warning)"
    said = cli_words(text, "train")
    assert "--strict-data" in said and "strict=True" not in said and "strict=False" not in said
    warning = "skipped 1 unusable image file(s) under d (...). The full list is in loader.bad_files; strict=True "
    warning += "makes this an error."
    assert cli_words(warning, "train").endswith("(...). --strict-data makes this an error.")
    assert cli_words(warning, "embed").endswith("(...).")  # embed has no such flag: nothing suggested


def report_on_a_read_only_run_does_not_suggest_out(w: World) -> None:
    err = PermissionError(errno.EACCES, "Permission denied", str(w.run / "report"))
    said = describe_error(err, "report")
    assert "--out" not in said and "Permission denied" in said
    assert "another --out" in describe_error(err, "export")


# ------------------------------------------------------------------------------------------------ caps, locale


def neighbors_k_larger_than_the_rows_is_said_once(w: World) -> None:
    small = _other_npz(w.tmp / "small.npz", n=12)
    done = _ok(run_cli("neighbors", w.run, "--data", small, "--k", "50", "--out", w.tmp / "n.png"))
    assert done.stdout.count("k=50 is more than the 12 rows; using 12") == 1, done.stdout


def eval_k_larger_than_the_rows_is_said_once(w: World) -> None:
    small = _other_npz(w.tmp / "small.npz", n=30)
    args = [a if a != "5" else "200" for a in FAST_EVAL]
    done = _ok(run_cli("eval", w.run, "--data", small, *args))
    n_train = json.loads((w.run / "eval-small.json").read_text())["data"]["n_train"]
    line = f"k=200 is more than the {n_train} training rows; using {n_train}"
    assert done.stdout.count(line) == 1, done.stdout


def help_in_a_c_locale(w: World) -> None:
    for args in (["--help"], ["export", "--help"], ["eval", "--help"]):
        done = run_cli_process(*args, LC_ALL="C", LANG="C", PYTHONIOENCODING="ascii")
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "UnicodeEncodeError" not in done.stderr
        assert "usage: vicreg" in done.stdout


def messages_in_a_c_locale(w: World) -> None:
    odd = w.tmp / "caf\u00e9.txt"
    done = run_cli_process("eval", odd, LC_ALL="C", LANG="C", PYTHONIOENCODING="ascii")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("vicreg eval: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr


# ------------------------------------------------------------------------------------------------ the table

CASES: dict[str, Callable[[World], None]] = {
    case.__name__.replace("_", " "): case
    for case in (
        export_default_goes_into_the_run_and_replaces_only_itself,
        export_refuses_a_users_file,
        export_force_replaces_a_users_file,
        export_refuses_another_runs_backbone,
        export_refuses_an_export_of_another_encoder,
        export_never_replaces_a_folder_of_other_files,
        eval_on_other_data_keeps_the_runs_own_result,
        eval_out_with_a_suffix_it_cannot_write,
        eval_out_that_is_a_folder,
        embed_out_with_a_suffix_it_cannot_write,
        neighbors_out_with_a_suffix_matplotlib_cannot_write,
        neighbors_picture_named_csv_on_an_image_run,
        neighbors_writes_other_picture_formats,
        export_out_with_a_suffix_no_format_has,
        export_file_name_that_is_a_folder,
        config_given_a_folder,
        config_given_a_pipe,
        export_out_that_is_a_pipe,
        eval_data_that_is_a_device,
        embed_counts_a_folder_behind_a_link_loop_once,
        embed_skips_a_file_link_that_loops,
        eval_data_cut_short,
        embed_data_claiming_an_impossible_size,
        eval_data_in_a_damaged_archive,
        table_with_a_text_column,
        worker_errors_are_one_line_with_workers_on,
        embed_npy_gets_an_index_that_lines_up_with_the_files,
        embed_npz_carries_index_and_paths,
        embed_of_arrays_has_the_identity_index,
        warnings_name_cli_flags_and_no_source_lines,
        loose_files_beside_class_folders_are_explained_in_folders,
        strict_data_errors_name_the_flag,
        report_on_a_read_only_run_does_not_suggest_out,
        neighbors_k_larger_than_the_rows_is_said_once,
        eval_k_larger_than_the_rows_is_said_once,
        help_in_a_c_locale,
        messages_in_a_c_locale,
    )
}
SLOW = {"help in a c locale", "messages in a c locale", "worker errors are one line with workers on"}
"""Real processes (the C locale) and loader worker processes."""


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_the_cli_holds(case: str, world: World) -> None:
    CASES[case](world)


def test_the_table_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25, len(CASES)


def test_the_library_refuses_before_building_anything(tmp_path: Path) -> None:
    """export_encoder itself (not only the CLI) leaves an unrelated file alone unless forced."""
    spec = EncoderSpec("mlp", {"in_channels": 3, "width": 8, "depth": 2}, 8, "table", (3,), (0.0,) * 3, (1.0,) * 3)
    mine = tmp_path / "notes.safetensors"
    mine.write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match="--force"):
        export_encoder(spec.build().state_dict(), spec, mine)
    assert mine.read_bytes() == b"x" * 10
    assert export_encoder(spec.build().state_dict(), spec, mine, force=True).path == mine
    assert read_backbone_spec(mine) == spec
