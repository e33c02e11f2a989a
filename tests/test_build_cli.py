"""Every data kind through the real CLI: train, then eval, embed, export and report on image, signal, table and
two-modality runs; the bundled table presets; checkpoints written before the build layer keep loading."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data.make_files import write_mnist
from tests.helpers import KINDS, TinyRuns, image_npz, run_cli, tiny_config
from vicreg.build import (
    ImageKind,
    encoder_specs,
    load_encoder,
    model_from_specs,
    open_run,
    run_data_kind,
)
from vicreg.checkpoint import read_backbone_state
from vicreg.data import load
from vicreg.distributed import DistInfo
from vicreg.models import EncoderSpec
from vicreg.probes import extract_features
from vicreg.train import train

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "legacy"
FAST_EVAL = ["--probe-epochs", "2", "--k", "5", "--fractions", "0.5", "--device", "cpu"]
COMMON = ["--batch-size", "16", "--device", "cpu", "--epochs", "2", "--no-progress", "--log-every", "1"]


def _ok(args: list[str]) -> str:
    """Run ``vicreg ARGS`` in-process; it must succeed; returns what it printed."""
    done = run_cli(*args)
    assert done.returncode == 0, f"vicreg {' '.join(map(str, args))}: {done.stderr[-3000:]}"
    return done.stdout


def _sample_input(spec: EncoderSpec) -> torch.Tensor:
    shape = spec.input_shape if spec.kind != "signal" else (spec.input_shape[0], 40)
    return torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["signal", "table", "pair"])
def test_every_command_works_on_every_data_kind(kind: str, tmp_path: Path, tiny_runs: TinyRuns) -> None:
    """The image kind's eval, embed, export and report are test_eval_cli's tests (on the same shared run)."""
    run = tiny_runs.copy(kind, tmp_path / "run")  # trained by `vicreg train` with helpers.KINDS[kind]'s flags
    assert (run / "backbone.safetensors").is_file()

    _ok(["eval", str(run), *FAST_EVAL])
    report = json.loads((run / "eval.json").read_text())
    assert set(report["results"]) == {"vicreg", "random_init", "pixels"}
    assert report["data"]["kind"] == ("image" if kind == "pair" else kind)
    assert report["data"]["n_train"] > 0 and report["data"]["n_test"] > 0

    _ok(["embed", str(run), "--out", str(tmp_path / "emb.npz"), "--device", "cpu"])
    emb = np.load(tmp_path / "emb.npz")
    enc = load_encoder(run)
    rows = len(np.load(tiny_runs.data(kind))["labels" if kind == "image" else "y"])
    assert emb["embeddings"].shape == (rows, enc.model.feature_dim)

    out = tmp_path / "bb.safetensors"
    assert "loaded strictly" in _ok(["export", str(run), "--out", str(out)])
    fresh = enc.spec.build().eval()
    fresh.load_state_dict(read_backbone_state(out), strict=True)  # no model config needed: the spec rebuilds it
    x = _sample_input(enc.spec)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), enc.model.backbone(x), rtol=0, atol=0)

    _ok(["report", str(run), "--device", "cpu"])
    text = (run / "report.md").read_text()
    assert "## Evaluation" in text and "Embedding plots skipped" not in text, text


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["wine-mlp", "breast-cancer-mlp"])
def test_bundled_table_presets_evaluate_embed_export_and_report(preset: str, tmp_path: Path) -> None:
    run = tmp_path / preset
    _ok(["train", "--preset", preset, "--out", str(run), "--max-steps", "6", "--no-progress"])
    _ok(["eval", str(run), *FAST_EVAL])
    assert json.loads((run / "eval.json").read_text())["results"]["vicreg"]["knn"]["k5"]["top1"] > 0
    _ok(["embed", str(run), "--out", str(tmp_path / "e.npy"), "--split", "test"])
    _ok(["export", str(run), "--out", str(tmp_path / "b.pt")])
    _ok(["report", str(run)])
    assert (run / "report.md").is_file()


def test_a_failed_export_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "image"
    shutil.copytree(FIXTURES / "image", run / "checkpoints")
    import vicreg.export

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise vicreg.export.ExportCheckError("the check failed")

    monkeypatch.setattr(vicreg.export, "_compare", broken)
    out = tmp_path / "bb.safetensors"
    done = run_cli("export", run, "--out", out)
    assert done.returncode == 1 and done.stderr.startswith("vicreg export: ") and "the check failed" in done.stderr
    assert not out.exists() and not list(tmp_path.glob("bb*"))


@pytest.mark.parametrize("name", ["image", "table"])
def test_checkpoints_written_before_the_build_layer_still_load(name: str, tmp_path: Path) -> None:
    """Fixtures written by vicreg 0.1.0 before checkpoints carried their encoder (tests/fixtures/legacy)."""
    enc = load_encoder(FIXTURES / name / "last.pt")
    assert enc.spec.kind == name and enc.step == 2
    if name == "image":
        assert enc.spec.input_shape == (1, 16, 16) and enc.image_size == 16
        x = torch.from_numpy(np.load(FIXTURES / "img.npz")["images"][:8])
    else:
        assert enc.spec.input_shape == (5,) and len(enc.mean) == 5
        x = torch.from_numpy(np.load(FIXTURES / "tab.npz")["x"][:8])
    f = extract_features(enc.model.embed, x, mean=enc.mean, std=enc.std)
    assert f.shape == (8, enc.model.feature_dim) and torch.isfinite(f).all()
    data = FIXTURES / ("img.npz" if name == "image" else "tab.npz")
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / name, run / "checkpoints")
    _ok(["eval", str(run), "--data", str(data), *FAST_EVAL, "--no-baselines"])
    written = run / f"eval-{data.stem}.json"  # other data than the run's own (its path at training time)
    assert json.loads(written.read_text())["results"]["vicreg"]["feature_dim"] == enc.model.feature_dim


@pytest.mark.slow
def test_model_init_sets_the_starting_weights_once(tmp_path: Path, tiny_runs: TinyRuns) -> None:
    data = image_npz(tmp_path / "img.npz")
    flags = ["--data", str(data), *COMMON, *KINDS["image"][1], "--model.expander", "16-16"]
    exported = tmp_path / "a.safetensors"
    _ok(["export", str(tiny_runs.path("image")), "--out", str(exported)])  # a trained small CNN of the same shape
    source = read_backbone_state(exported)
    # warm-up from lr 0: the first step leaves the initial convolution weights as they were
    run = tmp_path / "b"
    init = ["--model.init", str(exported), "--optim.warmup-epochs", "1"]
    _ok(["train", "--out", str(run), "--max-steps", "1", *init, *flags])
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "a.safetensors" in state["init"]
    key = "features.0.0.weight" if "features.0.0.weight" in source else next(k for k in source if k.endswith("weight"))
    torch.testing.assert_close(state["model"][f"backbone.{key}"], source[key], rtol=0, atol=0)
    # a resumed run does not apply it again (the file may even be gone)
    exported.unlink()
    _ok(["train", "--out", str(run), "--max-steps", "3", *init, *flags])
    after = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert after["step"] == 3 and not torch.equal(after["model"][f"backbone.{key}"], source[key])


def test_model_init_with_a_wrong_file_gives_a_short_mismatch_report(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    data = image_npz(tmp_path / "img.npz")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3), "other": torch.zeros(1)}, wrong)
    flags = ["--data", str(data), *COMMON, *KINDS["image"][1], "--model.expander", "16-16"]
    done = run_cli("train", "--out", tmp_path / "r", "--max-steps", "1", "--model.init", wrong, *flags)
    text = done.stderr
    assert done.returncode == 1 and text.startswith("vicreg train: ")
    assert "missing" in text and "unexpected" in text and len(text.splitlines()) <= 6, text


def test_neighbors_finds_planted_duplicates_and_draws_the_grid(tmp_path: Path, tiny_runs: TinyRuns) -> None:
    from PIL import Image

    from vicreg.plots import grid_size

    rng = np.random.default_rng(5)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    planted = {("img03.png", "img03_copy.png"), ("img07.png", "img07_copy.png")}
    for a, b in planted:
        (folder / b).write_bytes((folder / a).read_bytes())
    run = tiny_runs.copy("image", tmp_path / "run")
    out = tmp_path / "grid.png"
    _ok(["neighbors", str(run), "--data", str(folder), "--query", "0", "3", "--k", "4", "--out", str(out)])
    _ok(["neighbors", str(run), "--data", str(folder), "--duplicates", "0.9999", "--out", str(out), "--k", "2"])
    from PIL import Image as PILImage

    assert PILImage.open(out).size == grid_size(8, 2)  # 8 random queries, k = 2
    rows = (tmp_path / "grid_duplicates.csv").read_text().splitlines()
    found = {tuple(sorted((Path(r.split(",")[4]).name, Path(r.split(",")[5]).name))) for r in rows[1:]}
    assert found == {tuple(sorted(p)) for p in planted}
    neighbours = (tmp_path / "grid.csv").read_text().splitlines()
    assert neighbours[0].startswith("query,rank,neighbor,similarity")
    cells = [r.split(",") for r in neighbours[1:]]
    for query in {c[0] for c in cells}:  # a query in the bank finds itself at similarity 1 (ties: a planted copy)
        own = [c for c in cells if c[0] == query]
        assert float(own[0][3]) > 0.9999 and any(c[2] == query and float(c[3]) > 0.9999 for c in own), own


# ------------------------------------------------------------------------------------------------ the build layer


def test_one_path_from_encoder_descriptions_to_a_model(tmp_path: Path) -> None:
    """Training's model, a model rebuilt from the checkpoint's descriptions and the random-init baseline are all
    built by model_from_specs: the same seed gives the same weights, the spec's feature size is the backbone's."""
    cfg = tiny_config(tmp_path, max_steps=1, knn_every=0)
    data = run_data_kind(cfg).training_data(cfg, DistInfo(), torch.device("cpu"))
    torch.manual_seed(3)
    model, spec, spec_b = data.model(cfg)
    assert (spec, spec_b) == encoder_specs(cfg, data.inputs)
    torch.manual_seed(3)
    again = model_from_specs(cfg.model, spec, spec_b)
    for (key, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    x = torch.zeros(2, *spec.input_shape)
    assert spec.build().eval()(x).shape == (2, spec.feature_dim)
    train(cfg)
    enc = load_encoder(cfg.out)
    assert enc.spec == spec
    assert {k: v.shape for k, v in enc.model.state_dict().items()} == {
        k: v.shape for k, v in again.state_dict().items()
    }


def test_the_data_root_is_an_argument_not_an_environment_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    write_mnist(root / "mnist", n_train=24, n_test=10)
    monkeypatch.delenv("VICREG_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no user cache holds it
    environment = dict(os.environ)
    with pytest.raises(FileNotFoundError, match="--data-root"):
        load("mnist", download=False)
    assert len(load("mnist", "test", download=False, root=root)) == 10

    # training reads the config's data_root; the run folder remembers it for every later command
    cfg = tiny_config(tmp_path, data="mnist", data_root=root, max_steps=1, knn_every=0)
    train(cfg)
    run = open_run(cfg.out, device="cpu")
    assert run.source == "mnist" and isinstance(run.kind, ImageKind) and run.kind.root == root
    assert len(run.kind.load_split(run.source, "test", run.encoder.spec).data) == 10
    _ok(["eval", str(cfg.out), *FAST_EVAL, "--no-baselines"])
    assert json.loads((cfg.out / "eval.json").read_text())["data"]["n_test"] == 10

    # another run's data by name: --data-root says where it is
    other = tmp_path / "other"
    write_mnist(other / "mnist", n_train=12, n_test=6, seed=1)
    _ok(["embed", str(cfg.out), "--data", "mnist", "--data-root", str(other), "--out", str(tmp_path / "e.npy")])
    assert np.load(tmp_path / "e.npy").shape[0] == 12
    assert dict(os.environ) == environment  # nothing above wrote to the environment
