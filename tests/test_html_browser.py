"""report.html in a real browser: Debian's headless Chromium renders the page of an image, a signal and a table
run without console errors, every image decodes, the explorer's plot is there, and hovering or clicking a point
shows its thumbnail (its row for tables) and its nearest neighbours; the same for the report.html of a tiny image
run made through the CLI. Skipped where Chromium is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import (
    chromium,
    hover,
    isolated_point,
    missing_browser,
    severe_logs,
    tap,
    undecoded_images,
    wait_for_plot,
    write_tiny_report,
)
from tests.helpers import run_cli, tiny_npz

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(missing_browser() is not None, reason=f"no headless browser: {missing_browser()}"),
]


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


@pytest.mark.parametrize("kind", ["image", "signal", "table"])
def test_report_renders_and_the_explorer_answers_hover_and_click(kind: str, tmp_path: Path, browser) -> None:
    page = write_tiny_report(kind, tmp_path / "report.html", n=120)
    browser.get(page.resolve().as_uri())
    wait_for_plot(browser)
    assert severe_logs(browser) == []
    assert undecoded_images(browser) == []
    images = browser.execute_script("return document.images.length")
    assert images == 1 if kind == "table" else images >= 3  # the figure (+ the near-duplicates' thumbnails)

    i = isolated_point(browser)
    tips = hover(browser, i)
    assert tips, "hovering a point shows no tooltip"
    text, widths = tips[0]
    assert f"row {i}" in text
    if kind == "table":
        assert "alcohol=" in text and widths == []
    else:
        assert widths and all(w > 0 for w in widths), "the tooltip's thumbnail did not decode"

    panel = tap(browser, i)
    assert "selected" in panel and f"row {i}" in panel and "nearest" in panel
    assert panel.count('class="nb"') == 1 + 6  # the point and its 6 neighbours
    if kind == "table":
        assert "alcohol=" in panel
    assert undecoded_images(browser) == []  # the panel's thumbnails decode too
    assert severe_logs(browser) == []


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of a tiny image run made through the CLI (train, eval, report)."""
    root = tmp_path_factory.mktemp("cli-report")
    data, run = tiny_npz(root / "tiny.npz"), root / "run"
    common = ["--device", "cpu"]
    train = ["--data", data, "--out", run, "--epochs", "2", "--batch-size", "16", "--views.size", "16"]
    train += ["--model.width", "4", "--model.expander", "32-32", "--no-progress", *common]
    assert run_cli("train", *train).returncode == 0
    assert run_cli("eval", run, "--probe-epochs", "2", "--k", "5", "--fractions", "0.5", *common).returncode == 0
    done = run_cli("report", run, *common)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == f"wrote {run / 'report.html'}", done.stderr
    return run / "report.html"


def test_a_cli_made_report_renders_and_hovering_shows_a_thumbnail(cli_report: Path, browser) -> None:
    browser.get(cli_report.resolve().as_uri())
    wait_for_plot(browser)
    assert severe_logs(browser) == []
    assert undecoded_images(browser) == []
    assert browser.execute_script("return document.images.length") >= 7  # the figures, at least
    i = isolated_point(browser)
    tips = hover(browser, i)
    assert tips, "hovering a point shows no tooltip"
    text, widths = tips[0]
    assert "test #" in text and widths and all(w > 0 for w in widths)
    panel = tap(browser, i)
    assert "selected" in panel and "nearest" in panel and panel.count('class="nb"') > 1
    assert undecoded_images(browser) == [] and severe_logs(browser) == []
