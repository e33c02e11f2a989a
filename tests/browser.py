"""Headless Chromium for the HTML report's tests (and docs/screenshots.py): Debian's /usr/bin/chromium driven by
Selenium through /usr/bin/chromedriver (nothing downloaded), three tiny report pages (images, signals, a table)
built from data bundled with scikit-learn, and the checks a person would make by looking.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vicreg.htmlreport import (
    Explorer,
    ReportFigure,
    Table,
    duplicates_among,
    image_thumbnails,
    kmeans_clusters,
    neighbors_among,
    signal_thumbnails,
    table_texts,
    write_html_report,
)

try:  # the dev extra installs selenium; without it the browser tests skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            return f"{path} is missing (apt-get install {package}; .ci/run installs it in CI)"
    return None


@contextlib.contextmanager
def chromium(width: int = 1200, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium session with a fresh profile, closed (and its profile removed) on exit."""
    profile = tempfile.mkdtemp(prefix="vicreg-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ tiny pages


def _map(features: np.ndarray) -> np.ndarray:
    """A quick 2-D map for tests: the two leading principal components (the report computes t-SNE/UMAP)."""
    x = features - features.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def _loss_figure() -> Figure:
    fig = Figure(figsize=(4, 2.5), dpi=80)
    ax = fig.add_subplot()
    steps = np.arange(50)
    ax.plot(steps, 30 * np.exp(-steps / 15) + 5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return fig


def tiny_explorer(kind: str, n: int = 240, seed: int = 0, tsne: bool = False) -> Explorer:
    """An explorer over ``n`` rows of bundled data: ``image`` (scikit-learn's 8x8 digits), ``signal`` (noisy
    sines, squares and saws) or ``table`` (the wine table, unlabelled so it is coloured by k-means clusters).
    The map is PCA (fast) or, with ``tsne``, scikit-learn's t-SNE (as the report draws it)."""
    from sklearn.datasets import load_digits, load_wine  # optional dependency, as in the package
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    if kind == "image":
        digits = load_digits()
        pick = rng.choice(len(digits.images), n, replace=False)
        images = (digits.images[pick] * 255 / 16).astype(np.uint8)[:, None]
        features = images.reshape(n, -1).astype(np.float64)
        labels, classes = digits.target[pick], [str(c) for c in digits.target_names]
        thumbs, texts, clusters = image_thumbnails(images), None, None
    elif kind == "signal":
        t = np.linspace(0, 4 * np.pi, 64)
        labels = np.arange(n) % 3
        phase = rng.uniform(0, 2 * np.pi, (n, 1))
        waves = [np.sin(t + phase), np.sign(np.sin(t + phase)), ((t + phase) % (2 * np.pi)) / np.pi - 1]
        base = np.stack([waves[y][i] for i, y in enumerate(labels)])
        series = np.stack([base, np.roll(base, 8, axis=1)], axis=1) + 0.1 * rng.normal(size=(n, 2, 64))
        features = np.abs(np.fft.rfft(series[:, 0], axis=1))
        classes = ["sine", "square", "saw"]
        thumbs, texts, clusters = signal_thumbnails(series), None, None
    elif kind == "table":
        wine = load_wine()
        n = min(n, len(wine.data))
        rows = wine.data[rng.choice(len(wine.data), n, replace=False)]
        features = (rows - rows.mean(0)) / rows.std(0)
        labels, classes, thumbs = None, [], None
        texts, clusters = table_texts(rows, wine.feature_names), kmeans_clusters(features, 3, seed=seed)
    else:
        raise ValueError(f"unknown kind {kind!r}: image, signal or table")
    idx, sims = neighbors_among(features, k=6)
    coords = TSNE(init="pca", random_state=seed).fit_transform(features) if tsne else _map(features)
    return Explorer(
        coords=coords,
        neighbors=idx,
        similarities=sims,
        labels=labels,
        class_names=classes,
        clusters=clusters,
        thumbnails=thumbs,
        texts=texts,
        names=[f"row {i}" for i in range(n)],
        duplicates=duplicates_among(features, 0.9, max_pairs=6),
        method="t-SNE" if tsne else "PCA",
        total=n,
    )


def write_tiny_report(kind: str, path: Path, n: int = 240, tsne: bool = False) -> Path:
    """A complete tiny report.html: a summary, a results table, one figure, the explorer and a config."""
    return write_html_report(
        path,
        f"Tiny {kind} report",
        summary=[f"A test page with {kind} data."],
        tables=[Table("Evaluation", ["features", "kNN top-1", "linear"], [["vicreg", "91.0", "92.5"]], "in %")],
        figures=[ReportFigure("Loss", _loss_figure(), "a made-up curve")],
        explorer=tiny_explorer(kind, n, tsne=tsne),
        config={"data": f"tiny-{kind}", "epochs": 2},
        notes=["nothing was skipped"],
    )


# ------------------------------------------------------------------------------------------------ checks

_POINT_XY = """
const view = Object.values(Bokeh.index).find((v) => v.frame !== undefined);
const data = view.model.renderers[0].data_source.data, i = arguments[0];
view.el.scrollIntoView({block: 'center'});
const box = view.canvas_view.el.getBoundingClientRect();
return [box.left + view.frame.x_scale.compute(data.x[i]), box.top + view.frame.y_scale.compute(data.y[i])];
"""

# the tooltip lives in Bokeh's shadow DOM: search every shadow root
_TOOLTIP = """
const found = [];
const walk = (root) => root.querySelectorAll('*').forEach((el) => {
  if (el.classList && el.classList.contains('vicreg-tip') && el.offsetParent !== null) found.push(el);
  if (el.shadowRoot) walk(el.shadowRoot);
});
walk(document);
return found.map((el) => [el.innerText, [...el.querySelectorAll('img')].map((im) => im.naturalWidth)]);
"""


def wait_for_plot(driver: Any, seconds: float = 20.0) -> None:
    """Until BokehJS has rendered the explorer's plot."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = "return typeof Bokeh !== 'undefined' && Object.values(Bokeh.index).some((v) => v.frame !== undefined)"
    WebDriverWait(driver, seconds).until(lambda d: d.execute_script(script))


def severe_logs(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def undecoded_images(driver: Any) -> list[str]:
    """The start of the ``src`` of every ``<img>`` in the page that did not decode."""
    return driver.execute_script(
        "return [...document.images].filter((im) => !im.complete || im.naturalWidth === 0)"
        ".map((im) => im.src.slice(0, 40))"
    )


def point_xy(driver: Any, i: int) -> tuple[int, int]:
    """Viewport position of point ``i`` of the explorer."""
    x, y = driver.execute_script(_POINT_XY, i)
    return round(x), round(y)


def hover(driver: Any, i: int) -> list[tuple[str, list[int]]]:
    """Move the mouse onto point ``i``; the visible tooltips as ``(text, widths of their decoded images)``."""
    x, y = point_xy(driver, i)
    action = ActionBuilder(driver)
    action.pointer_action.move_to_location(x, y)
    action.perform()
    return [(text, widths) for text, widths in driver.execute_script(_TOOLTIP)]


def tap(driver: Any, i: int) -> str:
    """Click point ``i``; the neighbour panel's HTML."""
    x, y = point_xy(driver, i)
    action = ActionBuilder(driver)
    action.pointer_action.move_to_location(x, y).click()
    action.perform()
    return driver.execute_script("return document.getElementById('vicreg-neighbours').innerHTML")


def isolated_point(driver: Any) -> int:
    """A point in the right half of the plot (the legend is top left) whose nearest other point on screen is
    farthest away, so a hover or a click hits it alone."""
    xy = np.array(
        driver.execute_script(
            "const v = Object.values(Bokeh.index).find((v) => v.frame !== undefined);"
            "const d = v.model.renderers[0].data_source.data;"
            "return d.x.map((x, i) => [v.frame.x_scale.compute(x) / v.frame.bbox.width,"
            " v.frame.y_scale.compute(d.y[i]) / v.frame.bbox.height]);"
        )
    )
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    nearest = np.where(xy[:, 0] > 0.5, gaps.min(1), -1.0)
    return int(nearest.argmax())
