"""report.html through the CLI on tiny runs of each modality: an image run and a signal run (labelled, evaluated
first) and an unlabelled table run (coloured by k-means cluster); the page is self-contained and holds the
explorer with each modality's preview; eval, embed and report say what they do in the piped output (lines, not a
bar); embed --tensorboard writes the projector's files."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli, tiny_npz

FAST_EVAL = ["--probe-epochs", "2", "--k", "5", "--fractions", "0.5", "--device", "cpu"]
COMMON = ["--device", "cpu", "--epochs", "2", "--no-progress", "--log-every", "1", "--model.width", "4"]
COMMON += ["--model.expander", "32-32"]


def _train(*args: object) -> None:
    done = run_cli("train", *args, *COMMON)
    assert done.returncode == 0, done.stderr


def _signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.linspace(0, 1, 24)
    x = np.sin(2 * np.pi * (2 + 3 * y)[:, None, None] * t) + 0.1 * rng.normal(size=(n, 2, 24))
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image")
    data = tiny_npz(root / "tiny.npz")
    _train("--data", data, "--out", root / "run", "--batch-size", "16", "--views.size", "16")
    return root / "run"


@pytest.fixture(scope="module")
def signal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signal")
    (x, y), (xt, yt) = _signals(32, 0), _signals(16, 1)
    np.savez(root / "sig.npz", x=x, y=y, x_test=xt, y_test=yt)
    _train(
        "--modality", "signal", "--data", root / "sig.npz", "--out", root / "run", "--batch-size", "8",
        "--model.backbone", "resnet1d", "--signal-views.length", "20", "--optim.name", "adamw",
    )  # fmt: skip
    return root / "run"


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.3, (20, 5)), rng.normal(2, 0.3, (20, 5))]).astype(np.float32)
    np.savez(root / "tab.npz", x=x)  # no labels: the explorer colours by cluster
    _train("--modality", "table", "--data", root / "tab.npz", "--out", root / "run", "--batch-size", "8",
           "--model.backbone", "mlp", "--optim.name", "adamw")  # fmt: skip
    return root / "run"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.links += [(tag, v or "") for k, v in attrs if k in ("src", "href")]


def _check_page(run: Path, stdout: str) -> str:
    page_path = run / "report.html"
    assert stdout.splitlines()[-1] == f"wrote {page_path}"  # the path of report.html at the end
    page = page_path.read_text()
    parser = _Links()
    parser.feed(page)
    outside = [v for _, v in parser.links if not v.startswith(("data:", "#"))]
    assert outside == [], "report.html must not load anything from the network or another file"
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)  # BokehJS's code names URLs it never loads
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", markup)
    assert "link" not in parser.tags
    assert 'id="explorer"' in page and "vicreg-neighbours" in page and "Bokeh" in page  # the explorer
    assert "Configuration" in page and "modality:" in page  # the config
    md = (run / "report.md").read_text()
    for png in ("loss", "std_hist", "spectrum", "embedding_map"):  # the same figures, inline
        assert f"report/{png}.png" in md
    assert page.count("data:image/png;base64,") >= 4
    # progress in the piped output: stages and per-batch lines (a final line with the rate)
    assert "features test: " in stdout and "rows/s" in stdout
    assert "2-D map of" in stdout and "embedding explorer:" in stdout
    return page


def _eval(run: Path) -> str:
    done = run_cli("eval", run, *FAST_EVAL)
    assert done.returncode == 0, done.stderr
    for line in ("features of vicreg:", "features vicreg train: ", "rows/s", "  kNN (k = 5)", "  linear probe: "):
        assert line in done.stdout, line
    assert "label fractions 50%" in done.stdout
    return done.stdout


def test_image_report_html_has_thumbnails_labels_and_the_eval_table(image_run: Path) -> None:
    _eval(image_run)
    done = run_cli("report", image_run, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    page = _check_page(image_run, done.stdout)
    assert "coloured by label" in page and "kNN k=5 top1/top5" in page  # eval table
    # every point carries a thumbnail: far more PNG data URIs than figures
    assert page.count("data:image/png;base64,") > 19 + 6


@pytest.mark.slow
def test_signal_report_html_has_sparklines(signal_run: Path) -> None:
    _eval(signal_run)
    done = run_cli("report", signal_run, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    page = _check_page(signal_run, done.stdout)
    assert "coloured by label" in page and page.count("data:image/png;base64,") > 16 + 6


@pytest.mark.slow
def test_unlabelled_table_report_html_is_coloured_by_cluster_and_shows_rows(table_run: Path) -> None:
    done = run_cli("report", table_run, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    page = _check_page(table_run, done.stdout)
    assert "coloured by cluster" in page and "x0=" in page and "no labels" in page


def _embed(run: Path, out: Path, rows: int) -> None:
    done = run_cli("embed", run, "--out", out, "--tensorboard", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "features: " in done.stdout and "rows/s" in done.stdout
    assert f"tensorboard --logdir {run / 'tb'}" in done.stdout
    assert (run / "tb" / "projector_config.pbtxt").is_file()
    files = {p.name for p in (run / "tb").glob("*/representation/*")}
    assert {"tensors.tsv", "metadata.tsv", "sprite.png"} <= files
    metadata = next((run / "tb").glob("*/representation/metadata.tsv")).read_text().splitlines()
    assert metadata[0] == "index\tlabel\tname" and len(metadata) == 1 + rows


def test_embed_tensorboard_writes_the_projector_with_image_thumbnails(image_run: Path, tmp_path: Path) -> None:
    _embed(image_run, tmp_path / "e.npy", 96)


@pytest.mark.slow
def test_embed_tensorboard_draws_signals_for_the_sprite(signal_run: Path, tmp_path: Path) -> None:
    _embed(signal_run, tmp_path / "e.npy", 32)
