"""report.html without a browser: self-contained (no URL in any src/href, figures and thumbnails decode), the
inputs checked, the explorer's helpers against naive references, thumbnails downscaled, the size bounded."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from vicreg.htmlreport import (
    MAX_POINTS,
    Explorer,
    ReportFigure,
    Table,
    duplicates_among,
    image_thumbnails,
    kmeans_clusters,
    neighbors_among,
    png_data_uri,
    render_html,
    sample_points,
    signal_images,
    signal_thumbnails,
    table_texts,
    write_html_report,
)


class _Links(HTMLParser):
    """Every (tag, attribute, value) of a src or href, and the text of each <script>."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [(tag, k, v or "") for k, v in attrs if k in ("src", "href")]


def _links(page: str) -> _Links:
    parser = _Links()
    parser.feed(page)
    return parser


def _decode(uri: str) -> Image.Image:
    head, _, data = uri.partition(",")
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def _explorer(n: int = 30, **kw: object) -> Explorer:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 8))
    idx, sims = neighbors_among(feats, 4)
    args: dict[str, object] = {"coords": rng.normal(size=(n, 2)), "neighbors": idx, "similarities": sims}
    return Explorer(**{**args, **kw})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ thumbnails


def test_image_thumbnails_are_downscaled_pngs_and_small_images_stay_exact() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (2, 3, 64, 96), dtype=np.uint8)
    small = rng.integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    for uri in image_thumbnails(big, size=40):
        im = _decode(uri)
        assert im.size == (40, 27) and im.mode == "RGB"  # the longest side is 40, the aspect kept
    for uri, original in zip(image_thumbnails(small, size=40), small, strict=True):
        im = _decode(uri)
        assert im.mode == "L" and np.array_equal(np.asarray(im), original[0])  # never enlarged, lossless


def test_thumbnails_refuse_what_they_cannot_draw() -> None:
    with pytest.raises(ValueError, match="uint8"):
        image_thumbnails(np.zeros((2, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="PNG"):
        png_data_uri(b"GIF89a")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        table_texts(np.zeros(3))


def test_signal_images_draw_each_channel_in_its_colour_on_white() -> None:
    t = np.linspace(0, 6.28, 50)
    series = np.stack([np.stack([np.sin(t), np.cos(t)]), np.zeros((2, 50))])
    ims = signal_images(series, size=(60, 30))
    assert ims.shape == (2, 3, 30, 60) and ims.dtype == np.uint8
    pixels = ims[0].reshape(3, -1).T
    assert {(31, 119, 180), (255, 127, 14)} <= {tuple(p) for p in pixels.tolist()}  # both channels drawn
    assert (ims[1] < 255).any()  # a constant series is a flat line, not nothing
    assert np.array_equal(ims, signal_images(series, size=(60, 30)))
    assert _decode(signal_thumbnails(series[:1], size=(60, 30))[0]).size == (60, 30)


def test_table_texts_name_the_columns_and_count_the_rest() -> None:
    rows = np.array([[1.0, 2.5, 3e4, 4.0]])
    assert table_texts(rows, ["a", "b", "c", "d"], max_values=3) == ["a=1, b=2.5, c=3e+04 (+1 more)"]
    assert table_texts(rows[:, :2]) == ["x0=1, x1=2.5"]


# ------------------------------------------------------------------------------------------------ explorer inputs


def test_neighbors_among_matches_a_naive_cosine_search_without_self() -> None:
    x = np.random.default_rng(1).normal(size=(40, 6))
    idx, sims = neighbors_among(x, 5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    expected = np.argsort(-cos, axis=1, kind="stable")[:, :5]
    assert np.array_equal(idx, expected)
    assert np.allclose(sims, np.take_along_axis(cos, expected, 1), atol=1e-5)


def test_kmeans_clusters_find_separated_groups_deterministically() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    truth = np.repeat(np.arange(3), 20)
    x = centres[truth] + rng.normal(size=(60, 3))
    got = kmeans_clusters(x, 3, seed=0)
    assert np.array_equal(got, kmeans_clusters(x, 3, seed=0))
    # the same partition up to renaming
    assert len({(a, b) for a, b in zip(truth.tolist(), got.tolist(), strict=True)}) == 3
    assert kmeans_clusters(x[:2], 10).shape == (2,)  # clipped to the rows


def test_duplicates_among_finds_a_copied_row_first() -> None:
    x = np.random.default_rng(2).normal(size=(20, 16))
    x[7] = x[3] * 2.0  # same direction
    pairs = duplicates_among(x, 0.99)
    assert pairs[0][:2] == (3, 7) and pairs[0][2] == pytest.approx(1.0, abs=1e-5)


def test_sample_points_is_a_seeded_sorted_subset_within_the_cap() -> None:
    a = sample_points(10_000, 2000, seed=3)
    assert len(a) == 2000 and len(set(a.tolist())) == 2000 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, sample_points(10_000, 2000, seed=3))
    assert not np.array_equal(a, sample_points(10_000, 2000, seed=4))
    assert np.array_equal(sample_points(5, 2000), np.arange(5))


def test_explorer_refuses_inconsistent_inputs_in_one_line() -> None:
    with pytest.raises(ValueError, match="sample_points"):
        _explorer(MAX_POINTS + 1)
    with pytest.raises(ValueError, match="labels has 3 entries for 30 points"):
        _explorer(labels=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="index the 30 points"):
        _explorer(neighbors=np.full((30, 4), 30), similarities=np.zeros((30, 4)))
    with pytest.raises(ValueError, match="duplicate pair"):
        _explorer(duplicates=[(0, 99, 0.99)])


def test_points_are_grouped_by_label_else_by_cluster() -> None:
    by_label = _explorer(labels=np.arange(30) % 2, class_names=["cat", "dog"], clusters=np.zeros(30, dtype=int))
    assert by_label.color_by == "label" and by_label.groups()[:2] == ["cat", "dog"]
    by_cluster = _explorer(clusters=np.arange(30) % 3)
    assert by_cluster.color_by == "cluster" and by_cluster.groups()[:3] == ["cluster 0", "cluster 1", "cluster 2"]


# ------------------------------------------------------------------------------------------------ the page


def _figure() -> Figure:
    fig = Figure(figsize=(2, 2), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_the_page_is_self_contained_and_holds_every_part(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (30, 1, 16, 16), dtype=np.uint8)
    png = tmp_path / "extra.png"
    Image.new("RGB", (5, 4), "red").save(png)
    explorer = _explorer(
        labels=np.arange(30) % 2, class_names=["cat", "dog"], thumbnails=image_thumbnails(images),
        duplicates=[(0, 1, 0.995)], total=500,
    )  # fmt: skip
    path = write_html_report(
        tmp_path / "report.html",
        "Run <b>x</b>",
        summary=["Last step 40 & loss 21.3."],
        tables=[Table("Evaluation", ["features", "kNN"], [["vicreg", "88.1"], ["pixels", "80.2"]], "accuracy in %")],
        figures=[ReportFigure("Loss", _figure(), "a caption"), ReportFigure("From a file", png)],
        explorer=explorer,
        config={"epochs": 2, "optim": {"name": "lars"}},
        notes=["UMAP is not installed: t-SNE"],
    )
    page = path.read_text()
    parsed = _links(page)
    outside = [(t, k, v) for t, k, v in parsed.links if not (v.startswith(("data:", "#")) or v == "")]
    assert outside == [], "the page must not load anything from a URL or a file"
    assert "link" not in parsed.tags  # no external stylesheet
    assert "Run &lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # text is escaped
    assert "Last step 40 &amp; loss 21.3." in page and "88.1" in page and "accuracy in %" in page
    assert "optim:\n  name: lars" in page and "UMAP is not installed" in page
    imgs = [v for t, k, v in parsed.links if t == "img"]
    assert len(imgs) == 2 + 2  # two figures, one duplicate pair
    assert [_decode(u).size for u in imgs[:2]] == [(100, 100), (5, 4)]
    assert "30 points (a seeded subset of 500 rows)" in page and f"at most {MAX_POINTS}" in page
    assert "Bokeh" in page and "vicreg-neighbours" in page and "0.9950" in page


def test_a_page_without_explorer_carries_no_bokeh() -> None:
    page = render_html("plain", tables=[Table("t", ["a"], [[1]])], config="a: 1\n")
    assert "Bokeh" not in page and '<pre class="config">a: 1</pre>' in page


def test_bad_figures_and_tables_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 values for 1 columns"):
        Table("t", ["a"], [[1, 2]])
    with pytest.raises(ValueError, match=r"not a \.png"):
        render_html("x", figures=[ReportFigure("f", tmp_path / "f.jpg")])
    with pytest.raises(TypeError, match=r"matplotlib figure, PNG bytes or a \.png path"):
        render_html("x", figures=[ReportFigure("f", 42)])


def test_two_thousand_points_with_thumbnails_stay_a_few_megabytes() -> None:
    """The cap that keeps the file sensible: 2000 points of 28 px noise (the worst case for PNG) < 6 MB."""
    n = MAX_POINTS
    images = np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    rng = np.random.default_rng(1)
    explorer = Explorer(
        coords=rng.normal(size=(n, 2)),
        neighbors=np.tile(np.arange(1, 9), (n, 1)),
        similarities=np.full((n, 8), 0.5),
        labels=np.arange(n) % 10,
        thumbnails=image_thumbnails(images),
    )
    size = len(render_html("big", explorer=explorer).encode())
    assert 1_000_000 < size < 6_000_000


def test_the_template_ships_with_the_package() -> None:
    template = resources.files("vicreg.htmlreport") / "templates" / "report.html.j2"
    assert template.is_file()
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"vicreg.htmlreport" = ["templates/*.j2"]' in text  # package data: in wheels, not only in a checkout
