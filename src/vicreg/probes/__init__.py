"""The evaluation primitives: leaves of the layer graph that the runs (``vicreg eval``, ``embed``, ``neighbors``,
``report``) and the online monitors stand on.

features (normalise rows with the encoder's statistics, batched extraction), cache (features kept on disk by
content), knn, linear (linear and label-fraction probes), retrieval (nearest neighbours and near-duplicates) and
table (the results table).
"""

from vicreg.probes.features import extract_features, normalize_rows, raw_features
from vicreg.probes.knn import knn_accuracy, knn_evaluate, knn_predict
from vicreg.probes.linear import ProbeResult, balanced_subset, linear_probe, probe_suite, standardize
from vicreg.probes.table import format_table, markdown_table

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
    "probe_suite",
    "raw_features",
    "standardize",
]
