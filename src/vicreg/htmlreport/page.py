"""One self-contained ``report.html``: summary, tables, figures, the embedding explorer and the configuration,
rendered by Jinja2 from ``templates/report.html.j2``. Every figure is a PNG data URI and BokehJS is inline, so
the file opens offline and can be mailed; nothing in it points to the network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from vicreg.checkpoint import atomic_write
from vicreg.htmlreport.explorer import Explorer, bokeh_resources, explorer_html
from vicreg.htmlreport.thumbs import figure_data_uri, png_data_uri

__all__ = ["ReportFigure", "Table", "render_html", "write_html_report"]


@dataclass(frozen=True)
class Table:
    """A results table: ``columns`` and ``rows`` (values shown with ``str``), a title and a caption below it.
    ``probes.table.table_rows(eval_report)`` gives the eval table's columns and rows."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""

    def __post_init__(self) -> None:
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"table {self.title!r}: a row has {len(r)} values for {len(self.columns)} columns")


@dataclass(frozen=True)
class ReportFigure:
    """A figure: a matplotlib ``Figure``, PNG bytes, or the path of a PNG file; inlined as a data URI."""

    title: str
    image: Any
    caption: str = ""

    def data_uri(self) -> str:
        if isinstance(self.image, bytes):
            return png_data_uri(self.image)
        if isinstance(self.image, str | os.PathLike):
            path = Path(self.image)
            if path.suffix.lower() != ".png":
                raise ValueError(f"figure {self.title!r}: {path} is not a .png file; give PNG bytes or a figure")
            return png_data_uri(path.read_bytes())
        if hasattr(self.image, "savefig"):
            return figure_data_uri(self.image)
        raise TypeError(f"figure {self.title!r}: need a matplotlib figure, PNG bytes or a .png path")


_ENV = Environment(
    loader=PackageLoader("vicreg.htmlreport", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(
    title: str,
    *,
    summary: Sequence[str] = (),
    tables: Sequence[Table] = (),
    figures: Sequence[ReportFigure] = (),
    explorer: Explorer | None = None,
    config: Mapping[str, Any] | str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The page as a string. ``summary``: paragraphs under the title; ``config``: a dict (shown as YAML) or
    YAML text; ``notes``: lines listed at the end (what was skipped and why)."""
    config_text = yaml.safe_dump(dict(config), sort_keys=False) if isinstance(config, Mapping) else config or ""
    pieces = explorer_html(explorer) if explorer is not None else None
    return _ENV.get_template("report.html.j2").render(
        title=title,
        summary=list(summary),
        tables=list(tables),
        figures=[(f.title, f.data_uri(), f.caption) for f in figures],
        explorer=pieces,
        explorer_script=Markup(pieces.script) if pieces else "",
        explorer_div=Markup(pieces.div) if pieces else "",
        bokeh_js=Markup(bokeh_resources()) if pieces else "",
        config=config_text.rstrip(),
        notes=list(notes),
    )


def write_html_report(path: str | os.PathLike[str], title: str, **parts: Any) -> Path:
    """Write :func:`render_html` ``(title, **parts)`` to ``path`` atomically; returns the path."""
    text = render_html(title, **parts)
    return atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))
