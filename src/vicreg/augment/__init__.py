"""Data augmentation: two views per batch (images, signals, table rows, pairs), batched on the batch's device."""

from vicreg.augment.images import PAPER_VIEW_A, PAPER_VIEW_B, SYMMETRIC_VIEW, PaperViews, ViewConfig
from vicreg.augment.pairs import PairViews, TensorPair
from vicreg.augment.signals import SIGNAL_VIEW, SignalViewConfig, SignalViews
from vicreg.augment.tabular import TABLE_VIEW, TableViewConfig, TabularViews

__all__ = [
    "PAPER_VIEW_A",
    "PAPER_VIEW_B",
    "SIGNAL_VIEW",
    "SYMMETRIC_VIEW",
    "TABLE_VIEW",
    "PairViews",
    "PaperViews",
    "SignalViewConfig",
    "SignalViews",
    "TableViewConfig",
    "TabularViews",
    "TensorPair",
    "ViewConfig",
]
