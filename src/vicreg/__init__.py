"""VICReg: Variance-Invariance-Covariance Regularization for self-supervised learning."""

from vicreg.augment import PairViews, PaperViews, SignalViews, TabularViews, ViewConfig
from vicreg.backbone import load_backbone
from vicreg.export import export_encoder
from vicreg.loss import (
    VICRegLoss,
    VICRegOutput,
    covariance_term,
    invariance_term,
    variance_covariance_loss,
    variance_term,
    vicreg_loss,
    vicreg_multiview_loss,
)
from vicreg.models import Expander, VICReg

__all__ = [
    "Expander",
    "PairViews",
    "PaperViews",
    "SignalViews",
    "TabularViews",
    "VICReg",
    "VICRegLoss",
    "VICRegOutput",
    "ViewConfig",
    "covariance_term",
    "export_encoder",
    "invariance_term",
    "load_backbone",
    "variance_covariance_loss",
    "variance_term",
    "vicreg_loss",
    "vicreg_multiview_loss",
]
__version__ = "0.1.0"
