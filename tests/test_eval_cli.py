"""End to end on a tiny run: vicreg eval, report, embed, export, torch.hub; report numbers with known answers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import TinyRuns, run_cli, tiny_config
from vicreg.build import load_encoder
from vicreg.checkpoint import CheckpointError, load_checkpoint, read_backbone_state, save_checkpoint
from vicreg.diagnostics import covariance_spectrum, effective_rank, spectral_effective_rank
from vicreg.eval import EvalSettings, eval_protocol
from vicreg.report import read_metrics
from vicreg.train import train

REPO = Path(__file__).resolve().parents[1]
FAST_EVAL = ["--probe-epochs", "3", "--k", "5", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_runs: TinyRuns) -> Path:
    """This module's copy of the session's tiny image run (its tests write eval.json, the cache, the report)."""
    return tiny_runs.copy("image", tmp_path_factory.mktemp("eval") / "run")


# ------------------------------------------------------------------------------------------------ numbers


def test_help_lists_the_evaluation_commands() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("eval", "embed", "report", "export", "neighbors", "info"):
        assert command in top.stdout
    flags = {
        "eval": ("--data", "--test-data", "--k", "--temperature", "--probe-epochs", "--probe-lr", "--fractions"),
        "embed": ("--out", "--data", "--split", "--data-root", "--batch-size", "--data-column"),
        "report": ("--data", "--max-points", "--seed"),
        "neighbors": ("--query", "--k", "--duplicates", "--no-cache", "--data-root"),
        "export": ("--out", "--format", "--branch"),
    }
    for command, expected in flags.items():
        text = run_cli(command, "--help")
        assert text.returncode == 0, (command, text.stderr)
        for flag in expected:
            assert flag in text.stdout, (command, flag)
    assert "--no-baselines" in run_cli("eval", "--help").stdout
    # the protocol in the help is the one eval_protocol describes (words wrap differently on a terminal)
    words = " ".join(run_cli("eval", "--help").stdout.split())
    assert " ".join(eval_protocol(EvalSettings())["linear"].split()) in words


@pytest.mark.parametrize("k", [1, 3, 10])
def test_effective_rank_of_k_equal_eigenvalues_is_k(k: int) -> None:
    eig = torch.cat([torch.full((k,), 2.5), torch.zeros(16 - k)])
    assert spectral_effective_rank(eig) == pytest.approx(k)


def test_effective_rank_known_spectra() -> None:
    assert spectral_effective_rank(torch.zeros(8)) == 1.0
    # two singular values in ratio 3:1 -> p = (.75, .25) -> exp(entropy)
    expected = float(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))
    assert spectral_effective_rank(torch.tensor([9.0, 1.0, 0.0])) == pytest.approx(expected)


def test_covariance_spectrum_matches_numpy_and_rankme() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 3, generator=g) @ torch.randn(3, 12, generator=g)  # rank 3 in 12 dimensions
    eig = covariance_spectrum(z)
    ref = np.sort(np.linalg.eigvalsh(np.cov(z.double().numpy(), rowvar=False)))[::-1]
    np.testing.assert_allclose(eig.numpy(), np.clip(ref, 0, None), atol=1e-9)
    assert spectral_effective_rank(eig) < 3.0 + 1e-6
    centred = z - z.mean(0)
    assert spectral_effective_rank(eig) == pytest.approx(float(effective_rank(centred, eps=0.0)), rel=1e-3)


# ------------------------------------------------------------------------------------------------ eval


def test_eval_writes_json_and_uses_the_cache(run: Path) -> None:
    done = run_cli("eval", run, *FAST_EVAL, "--fractions", "0.01", "0.1")
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    report = json.loads((run / "eval.json").read_text())
    settings = report["protocol"]["settings"]
    assert settings["k"] == [5, 20] and settings["probe_epochs"] == 3 and settings["fractions"] == [0.01, 0.1]
    expected = eval_protocol(
        EvalSettings(k=(5, 20), probe_epochs=3), report["data"]["n_train"], report["data"]["n_test"]
    )
    assert {k: report["protocol"][k] for k in expected} == expected
    assert f"knn: {expected['knn']}" in printed and f"linear: {expected['linear']}" in printed
    assert set(report["results"]) == {"vicreg", "random_init", "pixels"}
    for name, r in report["results"].items():
        assert set(r["knn"]) == {"k5", "k20"} and set(r["semi"]) == {"1%", "10%"}, name
        assert 0.0 <= r["linear"]["last_top1"] <= r["linear"]["best_top1"] <= 100.0
    assert report["results"]["pixels"]["feature_dim"] == 16 * 16
    assert report["results"]["vicreg"]["feature_dim"] == 32  # small_cnn width 4 -> 8 * 4
    assert "80% train / 20% test" in report["data"]["split"]  # a .npz has no test split
    assert report["data"]["n_train"] + report["data"]["n_test"] == 96
    assert "peeks" in report["protocol"]["linear"] and "not fine-tuning" in report["protocol"]["semi"]
    assert "vicreg" in printed and "random_init" in printed and "kNN k=5" in printed
    assert report["results"]["vicreg"]["cached_features"] is False
    assert len(list((run / "features").glob("*.pt"))) == 4  # train and test of vicreg and random_init

    assert run_cli("eval", run, *FAST_EVAL, "--no-baselines", "--out", run / "again.json").returncode == 0
    again = json.loads((run / "again.json").read_text())
    assert again["results"]["vicreg"]["cached_features"] is True
    assert again["results"]["vicreg"]["knn"] == report["results"]["vicreg"]["knn"]
    assert set(again["results"]) == {"vicreg"}


def test_eval_features_are_those_of_the_trained_backbone(run: Path) -> None:
    enc = load_encoder(run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert enc.mean == tuple(state["encoder"]["mean"]) and enc.step == state["step"]
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    from vicreg.probes import extract_features

    manual = enc.model.embed((x.float() / 255 - enc.mean[0]) / enc.std[0])
    torch.testing.assert_close(extract_features(enc.model.embed, x, mean=enc.mean, std=enc.std), manual)


def test_eval_errors_are_clear(run: Path, tmp_path: Path) -> None:
    missing = run_cli("eval", tmp_path / "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("vicreg eval: ") and "does not exist" in missing.stderr
    np.savez(tmp_path / "unlabelled.npz", images=np.zeros((20, 16, 16), dtype=np.uint8))
    unlabelled = run_cli("eval", run, "--data", tmp_path / "unlabelled.npz", "--out", tmp_path / "eval.json")
    assert unlabelled.returncode == 0 and "label-free" in unlabelled.stdout  # label-free only: no labels needed
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    del state["model"]["expander.0.weight"]
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_encoder(tmp_path / "broken.pt")


# ------------------------------------------------------------------------------------------------ report


def test_report_writes_plots_and_markdown(run: Path) -> None:
    if not (run / "eval.json").is_file():
        assert run_cli("eval", run, *FAST_EVAL).returncode == 0
    done = run_cli("report", run, "--device", "cpu")
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == f"wrote {run / 'report.html'}", done.stderr
    assert f"wrote {run / 'report.md'}" in done.stdout
    md = (run / "report.md").read_text()
    protocol = json.loads((run / "eval.json").read_text())["protocol"]
    assert f"- Linear probe: {protocol['linear']}." in md  # as vicreg eval described it, not a copy
    for png in ("loss", "lr", "knn", "std_hist", "spectrum", "embedding_map"):
        path = run / "report" / f"{png}.png"
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"report/{png}.png" in md
        with Image.open(path) as im:
            assert im.size[0] >= 600 and im.size[1] >= 300
    assert "| features | dim |" in md and "random_init" in md  # the eval table
    assert "```yaml" in md and "backbone: small_cnn" in md  # the config
    assert "Effective rank on test images" in md


def test_read_metrics_skips_a_torn_last_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


# ------------------------------------------------------------------------------------------------ embed, export, hub


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_embed_writes_every_row(run: Path, tmp_path: Path, suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"emb{suffix}"
    done = run_cli("embed", run, "--out", out, "--device", "cpu")
    assert done.returncode == 0 and f"wrote {out} (96 x 32)" in done.stdout.splitlines(), done.stderr
    enc = load_encoder(run)
    data = np.load(str(_tiny_data(run)))
    from vicreg.probes import extract_features

    expected = extract_features(enc.model.embed, torch.from_numpy(data["images"]), mean=enc.mean, std=enc.std).numpy()
    if suffix == ".npy":
        np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    elif suffix == ".npz":
        with np.load(out) as f:
            np.testing.assert_allclose(f["embeddings"], expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(f["labels"], data["labels"])
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table.column_names == ["index", "path", "label", "embedding"]
        np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), expected, rtol=1e-5, atol=1e-6)
        assert table["label"].to_pylist() == data["labels"].tolist()


def _tiny_data(run: Path) -> Path:
    return Path(load_checkpoint(run / "checkpoints" / "last.pt")["config"]["data"])


def test_embed_image_folder_to_parquet_has_paths(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for i in range(6):
        folder = tmp_path / "imgs" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "emb.parquet"
    assert run_cli("embed", run, "--data", tmp_path / "imgs", "--out", out, "--device", "cpu").returncode == 0
    table = pq.read_table(out)
    assert table.num_rows == 6 and all(p.endswith(".png") for p in table["path"].to_pylist())
    assert sorted(set(table["label"].to_pylist())) == [0, 1]


def test_embed_rejects_an_unknown_format(run: Path, tmp_path: Path) -> None:
    done = run_cli("embed", run, "--out", tmp_path / "x.csv")
    assert done.returncode == 1 and "unknown output format" in done.stderr


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_loads_strictly(run: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"backbone{suffix}"
    done = run_cli("export", run, "--out", out)
    assert done.returncode == 0 and "loaded strictly into a new small_cnn" in done.stdout, done.stderr
    from vicreg.models import build_backbone

    module = build_backbone("small_cnn", in_channels=1, width=4)
    module.load_state_dict(read_backbone_state(out), strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_backbone("small_cnn", in_channels=1, width=8).load_state_dict(read_backbone_state(out), strict=True)


@pytest.mark.slow
def test_export_of_a_resnet_loads_into_torchvision(tmp_path: Path) -> None:
    import torchvision

    from vicreg.config import ModelConfig

    cfg = tiny_config(
        tmp_path, max_steps=1, model=ModelConfig(backbone="resnet18", expander="32-32", small_images=True)
    )
    train(replace(cfg, knn_every=0))
    out = tmp_path / "r18.safetensors"
    assert run_cli("export", cfg.out, "--out", out).returncode == 0
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    net.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    net.load_state_dict(read_backbone_state(out), strict=True)


def test_torch_hub_loads_a_local_checkout(run: Path) -> None:
    backbone = torch.hub.load(str(REPO), "vicreg_backbone", source="local", checkpoint=str(run), trust_repo=True)
    assert not backbone.training and backbone.vicreg_image_size == 16
    assert backbone(torch.zeros(2, 1, 16, 16)).shape == (2, 32)
    enc = load_encoder(run)
    for a, b in zip(backbone.state_dict().values(), enc.model.backbone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_embedding_map_uses_umap_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from vicreg.report import embedding_map

    seen = {}

    class FakeUMAP:
        def __init__(self, n_components: int, random_state: int) -> None:
            seen.update(n_components=n_components, random_state=random_state)

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            return x[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    coords, method = embedding_map(torch.randn(30, 8), seed=3)
    assert method == "UMAP" and coords.shape == (30, 2) and seen == {"n_components": 2, "random_state": 3}
    monkeypatch.setitem(sys.modules, "umap", None)  # not installed: scikit-learn's t-SNE
    coords, method = embedding_map(torch.randn(30, 8), seed=3)
    assert method == "t-SNE" and coords.shape == (30, 2)
