"""The report's embedding explorer: an interactive Bokeh scatter of a 2-D map (t-SNE/UMAP, computed by the
caller) whose points show their thumbnail and label on hover and their nearest neighbours on a click.

Bokeh renders it: a ``HoverTool`` with an HTML tooltip, and a ``TapTool`` whose ``CustomJS`` callback (a few
lines) writes the clicked point's neighbours into a panel beside the plot. :func:`explorer_html` returns the
plot's ``<script>`` and ``<div>`` (``bokeh.embed.components``) and the inline BokehJS the page must carry, so the
file needs no network.

Inputs are plain arrays (:class:`Explorer`); the helpers compute them from features: :func:`sample_points`
(the seeded subset, at most :data:`MAX_POINTS`), :func:`neighbors_among`, :func:`kmeans_clusters` and
:func:`duplicates_among`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from bokeh.embed import components
from bokeh.models import CDSView, ColumnDataSource, CustomJS, GroupFilter, HoverTool, TapTool
from bokeh.models.renderers import DataRenderer
from bokeh.palettes import Category10, Category20, turbo
from bokeh.plotting import figure
from bokeh.resources import Resources
from bokeh.transform import factor_cmap
from torch import Tensor

from vicreg.probes.retrieval import find_duplicates, nearest_neighbors

__all__ = [
    "MAX_LEGEND",
    "MAX_PAIRS",
    "MAX_POINTS",
    "Explorer",
    "ExplorerHTML",
    "bokeh_resources",
    "duplicates_among",
    "explorer_html",
    "kmeans_clusters",
    "neighbors_among",
    "sample_points",
]

MAX_POINTS = 2000
"""At most this many points in the explorer (a seeded subset of the rows): the page stays a few MB."""
MAX_PAIRS = 50
"""At most this many near-duplicate pairs are listed (the most similar first)."""
MAX_LEGEND = 20
"""More groups than this get no legend (the hover names each point's group)."""

PANEL_ID = "vicreg-neighbours"

# The tap callback: the clicked point, then its neighbours with their thumbnail (or text), group and similarity.
_TAP_JS = """
const i = source.selected.indices[0];
if (i === undefined) return;
const d = source.data, esc = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
const cell = (j, head) => `<div class="nb">` + (d.thumb[j] ? `<img src="${d.thumb[j]}" alt="">` : '')
  + `<span>${head}<br>${esc(d.name[j])}: ${esc(d.group[j])}</span>`
  + (d.text[j] ? `<small>${esc(d.text[j])}</small>` : '') + `</div>`;
let h = cell(i, '<b>selected</b>') + `<p>${d.nbr[i].length} nearest (cosine similarity):</p>`;
d.nbr[i].forEach((j, r) => { h += cell(j, `${r + 1}. ${d.nbr_sim[i][r].toFixed(3)}`); });
document.getElementById(panel).innerHTML = h;
"""


@dataclass(frozen=True)
class Explorer:
    """What the explorer shows, for ``N <= MAX_POINTS`` points (row ``n`` of every array is point ``n``).

    coords: ``(N, 2)`` the 2-D map. neighbors / similarities: ``(N, k)`` each point's nearest other points (indices
    into these ``N``) and their cosine similarity (:func:`neighbors_among`). labels + class_names colour by label;
    without labels, ``clusters`` (:func:`kmeans_clusters`) colour the points. thumbnails: a data URI per point
    (``thumbs.image_thumbnails`` / ``signal_thumbnails``); texts: a line per point (``thumbs.table_texts``).
    names: per point (default ``#n``). duplicates: ``(i, j, similarity)`` pairs among the points. method: the
    map's name ("t-SNE", "UMAP"). total: how many rows the points were sampled from (stated in the page).
    """

    coords: np.ndarray
    neighbors: np.ndarray
    similarities: np.ndarray
    labels: np.ndarray | None = None
    class_names: Sequence[str] = ()
    clusters: np.ndarray | None = None
    thumbnails: Sequence[str] | None = None
    texts: Sequence[str] | None = None
    names: Sequence[str] | None = None
    duplicates: Sequence[tuple[int, int, float]] = field(default_factory=tuple)
    method: str = "t-SNE"
    total: int | None = None

    def __post_init__(self) -> None:
        n = len(self.coords)
        if np.shape(self.coords) != (n, 2):
            raise ValueError(f"coords must be (N, 2), got {np.shape(self.coords)}")
        if n > MAX_POINTS:
            raise ValueError(
                f"the explorer shows at most {MAX_POINTS} points, got {n}: pick a subset with sample_points()"
            )
        if np.shape(self.neighbors) != np.shape(self.similarities) or len(self.neighbors) != n:
            raise ValueError(
                f"neighbors {np.shape(self.neighbors)} and similarities {np.shape(self.similarities)} must both be "
                f"(N, k) with N = {n} points"
            )
        if np.size(self.neighbors) and not 0 <= int(np.min(self.neighbors)) <= int(np.max(self.neighbors)) < n:
            raise ValueError(f"neighbors must index the {n} points (0..{n - 1})")
        for what, values in (
            ("labels", self.labels),
            ("clusters", self.clusters),
            ("thumbnails", self.thumbnails),
            ("texts", self.texts),
            ("names", self.names),
        ):
            if values is not None and len(values) != n:
                raise ValueError(f"{what} has {len(values)} entries for {n} points")
        for i, j, _ in self.duplicates:
            if not (0 <= i < n and 0 <= j < n):
                raise ValueError(f"duplicate pair ({i}, {j}) does not index the {n} points")

    @property
    def color_by(self) -> str:
        return "label" if self.labels is not None else "cluster" if self.clusters is not None else "none"

    def groups(self) -> list[str]:
        """Each point's group as shown: its class name, ``cluster c``, or ``all``."""
        if self.labels is not None:
            names = list(self.class_names)
            return [
                names[y] if 0 <= y < len(names) else ("unlabelled" if y < 0 else str(y))
                for y in np.asarray(self.labels).astype(int).tolist()
            ]
        if self.clusters is not None:
            return [f"cluster {c}" for c in np.asarray(self.clusters).astype(int).tolist()]
        return ["all"] * len(self.coords)

    def point_names(self) -> list[str]:
        return [str(s) for s in self.names] if self.names is not None else [f"#{n}" for n in range(len(self.coords))]


class ExplorerHTML(NamedTuple):
    """The explorer's pieces for the page: Bokeh's ``<script>`` and ``<div>``, the id of the neighbour panel, a
    sentence describing it, and the near-duplicate pairs to list (dicts for the template)."""

    script: str
    div: str
    panel_id: str
    description: str
    pairs: list[dict[str, Any]]


def bokeh_resources() -> str:
    """BokehJS inline (core only: the explorer uses no widgets), for the page's ``<head>``."""
    return Resources(mode="inline", components=["bokeh"]).render_js()


def _palette(n: int) -> list[str]:
    if n <= 10:
        return list(Category10[10][: max(n, 1)])
    if n <= 20:
        return list(Category20[20][:n])
    return list(turbo(n))


def _factor_order(groups: list[str], explorer: Explorer) -> list[str]:
    """Groups in label / cluster order (not alphabetical: "cluster 10" after "cluster 9")."""
    keys = explorer.labels if explorer.labels is not None else explorer.clusters
    if keys is None:
        return sorted(set(groups))
    first: dict[str, int] = {}
    for g, key in zip(groups, np.asarray(keys).astype(int).tolist(), strict=True):
        first.setdefault(g, key)
    return sorted(first, key=lambda g: first[g])


def explorer_html(explorer: Explorer, *, width: int = 640, height: int = 560, point_size: float = 6.0) -> ExplorerHTML:
    """Render :class:`Explorer` with Bokeh: the scatter (hover: thumbnail or text, name, group; click: the
    neighbours in the panel ``panel_id``) and the near-duplicate pairs (at most :data:`MAX_PAIRS`)."""
    n = len(explorer.coords)
    groups = explorer.groups()
    names = explorer.point_names()
    thumbs = list(explorer.thumbnails) if explorer.thumbnails is not None else [""] * n
    texts = list(explorer.texts) if explorer.texts is not None else [""] * n
    coords = np.asarray(explorer.coords, dtype=float)
    source = ColumnDataSource(
        {
            "x": coords[:, 0].tolist(),
            "y": coords[:, 1].tolist(),
            "name": names,
            "group": groups,
            "thumb": thumbs,
            "text": texts,
            "nbr": np.asarray(explorer.neighbors, dtype=int).tolist(),
            "nbr_sim": np.round(np.asarray(explorer.similarities, dtype=float), 4).tolist(),
        }
    )
    factors = _factor_order(groups, explorer)
    plot = figure(
        width=width,
        height=height,
        title=f"{explorer.method} map: {n} points, coloured by {explorer.color_by}",
        tools="pan,wheel_zoom,box_zoom,reset,save",
        active_scroll="wheel_zoom",
        match_aspect=True,
        toolbar_location="above",
    )
    colors = dict(zip(factors, _palette(len(factors)), strict=True))
    style: dict[str, Any] = {"source": source, "size": point_size, "alpha": 0.8, "line_color": None}
    if len(factors) <= MAX_LEGEND and explorer.color_by != "none":
        # one renderer per group over the same source: the legend in label order, a click on it hides the group
        renderers: list[DataRenderer] = [
            plot.scatter(
                "x",
                "y",
                view=CDSView(filter=GroupFilter(column_name="group", group=g)),
                color=colors[g],
                legend_label=g,
                **style,
            )
            for g in factors
        ]
        plot.legend.location = "top_left"
        plot.legend.click_policy = "hide"
        plot.legend.label_text_font_size = "9pt"
        plot.legend.background_fill_alpha = 0.6
    else:
        cmap = factor_cmap("group", list(colors.values()), factors)
        renderers = [plot.scatter("x", "y", color=cmap, **style)]
    plot.axis.visible = False
    plot.grid.visible = False
    tooltip = '<div class="vicreg-tip">'
    if explorer.thumbnails is not None:
        tooltip += '<img src="@thumb" alt="" style="width:64px;image-rendering:pixelated">'
    tooltip += "<div><b>@name</b>: @group</div>"
    if explorer.texts is not None:
        tooltip += '<div style="max-width:260px;white-space:normal">@text</div>'
    plot.add_tools(HoverTool(renderers=renderers, tooltips=tooltip + "</div>"))
    plot.add_tools(TapTool(renderers=renderers))
    source.selected.js_on_change("indices", CustomJS(args={"source": source, "panel": PANEL_ID}, code=_TAP_JS))
    script, div = components(plot)
    k = np.shape(explorer.neighbors)[1] if n else 0
    sampled = f" (a seeded subset of {explorer.total} rows)" if explorer.total and explorer.total > n else ""
    description = (
        f"{n} points{sampled}; the explorer shows at most {MAX_POINTS}. Coloured by {explorer.color_by}. Hover a "
        f"point to see it; click it for its {k} nearest neighbours among these points (cosine similarity of the "
        "representation); scroll to zoom, drag to pan"
        + ("; click a legend entry to hide that group." if plot.legend else ".")
    )
    pairs = [
        {
            "names": (names[i], names[j]),
            "groups": (groups[i], groups[j]),
            "thumbs": (thumbs[i], thumbs[j]),
            "texts": (texts[i], texts[j]),
            "similarity": float(s),
        }
        for i, j, s in sorted(explorer.duplicates, key=lambda p: -p[2])[:MAX_PAIRS]
    ]
    return ExplorerHTML(script, div, PANEL_ID, description, pairs)


# ------------------------------------------------------------------------------------------------ inputs


def sample_points(n: int, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subset of ``n`` rows, at most ``max_points`` (all rows when they fit)."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def neighbors_among(features: Tensor | np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, similarities)`` ``(N, k)`` of each row's ``k`` most cosine-similar other rows of ``features``."""
    feats = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features).float()
    n = feats.shape[0]
    sims, idx = nearest_neighbors(feats, feats, k, exclude_self=True, query_index=torch.arange(n))
    return idx.numpy(), sims.numpy()


def duplicates_among(
    features: Tensor | np.ndarray, threshold: float = 0.98, max_pairs: int = MAX_PAIRS
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, similarity)`` of rows whose cosine similarity is at least ``threshold``, most similar first."""
    feats = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features).float()
    return find_duplicates(feats, threshold, max_pairs=max_pairs).tolist()


def kmeans_clusters(features: Tensor | np.ndarray, n_clusters: int = 10, seed: int = 0) -> np.ndarray:
    """Cluster ids ``(N,)`` from scikit-learn's k-means on the L2-normalised rows (cosine geometry, as the
    neighbours use); ``n_clusters`` is clipped to the number of rows."""
    from sklearn.cluster import KMeans  # optional dependency: imported on use

    x = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty (N, D) matrix, got {x.shape}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(n_clusters, len(x))
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x).astype(np.int64)
