"""Evaluation of a frozen encoder: features, kNN, linear and label-fraction probes, embeddings export."""

from vicreg.evaluate.arrays import extract_array_features
from vicreg.evaluate.features import extract_features
from vicreg.evaluate.knn import knn_accuracy, knn_evaluate, knn_predict
from vicreg.evaluate.linear import ProbeResult, balanced_subset, linear_probe, standardize
from vicreg.evaluate.load import LoadedEncoder, check_backbone_loads, load_encoder, random_init_model
from vicreg.evaluate.runner import EvalSettings, evaluate_features, format_table, run_eval

__all__ = [
    "EvalSettings",
    "LoadedEncoder",
    "ProbeResult",
    "balanced_subset",
    "check_backbone_loads",
    "evaluate_features",
    "extract_array_features",
    "extract_features",
    "format_table",
    "knn_accuracy",
    "knn_evaluate",
    "knn_predict",
    "linear_probe",
    "load_encoder",
    "random_init_model",
    "run_eval",
    "standardize",
]
