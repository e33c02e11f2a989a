"""VICReg: Variance-Invariance-Covariance Regularization for self-supervised learning."""

from typing import TYPE_CHECKING

from vicreg.augment import ImageViews, OneViewConfig, PairViews, PaperViews, SignalViews, TableViews
from vicreg.backbone import load_backbone
from vicreg.deprecation import renamed
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
    "ImageViews",
    "OneViewConfig",
    "PairViews",
    "PaperViews",
    "SignalViews",
    "TableViews",
    "VICReg",
    "VICRegLoss",
    "VICRegOutput",
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

if TYPE_CHECKING:  # renamed names, kept one release (PaperViews stays: it is ImageViews, without a warning)
    TabularViews = TableViews
    ViewConfig = OneViewConfig
else:
    __getattr__ = renamed(__name__, {"TabularViews": TableViews, "ViewConfig": OneViewConfig})
