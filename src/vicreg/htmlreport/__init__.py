"""The self-contained HTML report: :func:`write_html_report` renders one ``report.html`` (summary, tables,
figures, the embedding explorer, the configuration) with no request to the network.

The caller computes the numbers (a 2-D map, features, labels); this package only draws them:

* :mod:`.page`: :class:`Table`, :class:`ReportFigure`, :func:`render_html`, :func:`write_html_report`;
* :mod:`.explorer`: :class:`Explorer` and the helpers that compute its inputs (:func:`sample_points`,
  :func:`neighbors_among`, :func:`kmeans_clusters`, :func:`duplicates_among`);
* :mod:`.thumbs`: thumbnails as PNG data URIs (images, signal sparklines) and table rows as text.
"""

from vicreg.htmlreport.explorer import (
    MAX_PAIRS,
    MAX_POINTS,
    Explorer,
    duplicates_among,
    explorer_html,
    kmeans_clusters,
    neighbors_among,
    sample_points,
)
from vicreg.htmlreport.page import ReportFigure, Table, render_html, write_html_report
from vicreg.htmlreport.thumbs import (
    THUMBNAIL_SIZE,
    figure_data_uri,
    image_thumbnails,
    png_data_uri,
    signal_images,
    signal_thumbnails,
    table_texts,
)

__all__ = [
    "MAX_PAIRS",
    "MAX_POINTS",
    "THUMBNAIL_SIZE",
    "Explorer",
    "ReportFigure",
    "Table",
    "duplicates_among",
    "explorer_html",
    "figure_data_uri",
    "image_thumbnails",
    "kmeans_clusters",
    "neighbors_among",
    "png_data_uri",
    "render_html",
    "sample_points",
    "signal_images",
    "signal_thumbnails",
    "table_texts",
    "write_html_report",
]
