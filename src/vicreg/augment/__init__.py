"""Data augmentation: two views per batch (images, signals, table rows, pairs), batched on the batch's device."""

from typing import TYPE_CHECKING

from vicreg.augment.images import (
    PAPER_VIEW_A,
    PAPER_VIEW_B,
    SYMMETRIC_VIEW,
    ImageViews,
    OneViewConfig,
    PaperViews,
)
from vicreg.augment.pairs import PairViews, TensorPair
from vicreg.augment.signals import SIGNAL_VIEW, SignalViewConfig, SignalViews
from vicreg.augment.tabular import TABLE_VIEW, TableViewConfig, TableViews
from vicreg.deprecation import renamed

__all__ = [
    "PAPER_VIEW_A",
    "PAPER_VIEW_B",
    "SIGNAL_VIEW",
    "SYMMETRIC_VIEW",
    "TABLE_VIEW",
    "ImageViews",
    "OneViewConfig",
    "PairViews",
    "PaperViews",
    "SignalViewConfig",
    "SignalViews",
    "TableViewConfig",
    "TableViews",
    "TensorPair",
]

if TYPE_CHECKING:  # renamed names, kept one release
    TabularViews = TableViews
    ViewConfig = OneViewConfig
else:
    __getattr__ = renamed(__name__, {"TabularViews": TableViews, "ViewConfig": OneViewConfig})
