"""Evaluation of a frozen encoder: feature extraction and kNN classification."""

from vicreg.evaluate.arrays import extract_array_features
from vicreg.evaluate.features import extract_features
from vicreg.evaluate.knn import knn_accuracy, knn_predict

__all__ = ["extract_array_features", "extract_features", "knn_accuracy", "knn_predict"]
