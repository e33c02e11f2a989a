"""Evaluation of a frozen encoder.

The package root holds the primitives (leaves of the layer graph): features, kNN, linear and label-fraction
probes, the feature cache, the results table and the online monitors. The runs built on them live in
:mod:`vicreg.evaluate.runner` (``vicreg eval``) and :mod:`vicreg.evaluate.embed` (``vicreg embed``), one layer up,
and are imported from there.
"""

from vicreg.evaluate.features import extract_features, normalize_rows, raw_features
from vicreg.evaluate.knn import knn_accuracy, knn_evaluate, knn_predict
from vicreg.evaluate.linear import ProbeResult, balanced_subset, linear_probe, standardize
from vicreg.evaluate.table import format_table, markdown_table

__all__ = [
    "ProbeResult",
    "balanced_subset",
    "extract_features",
    "format_table",
    "knn_accuracy",
    "knn_evaluate",
    "knn_predict",
    "linear_probe",
    "markdown_table",
    "normalize_rows",
    "raw_features",
    "standardize",
]
