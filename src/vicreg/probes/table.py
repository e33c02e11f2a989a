"""The results table of ``eval.json``, as plain text (``vicreg eval``) and Markdown (``vicreg report``)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_table", "markdown_table", "table_rows"]


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:5.1f}"


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (one row per feature set)."""
    results = report["results"]
    first = next(iter(results.values()))
    ks = list(first["knn"])
    fractions = list(first["semi"])
    header = ["features", "dim"]
    header += [f"kNN {k.replace('k', 'k=')} top1/top5" for k in ks]
    header += ["linear last (best)"] + [f"{f} labels last" for f in fractions]
    rows = []
    for name, r in results.items():
        row = [name, str(r["feature_dim"])]
        row += [f"{_pct(r['knn'][k].get('top1'))} / {_pct(r['knn'][k].get('top5'))}" for k in ks]
        row.append(f"{_pct(r['linear']['last_top1'])} ({_pct(r['linear']['best_top1'])})")
        row += [_pct(r["semi"][f]["last_top1"]) for f in fractions]
        rows.append(row)
    return header, rows


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the accuracies (%) of eval.json, one row per feature set."""
    header, rows = table_rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(report: dict[str, Any]) -> str:
    """The same table in Markdown."""
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.strip() for c in r) + " |" for r in rows]
    return "\n".join(lines)
