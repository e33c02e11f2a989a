"""Data augmentation: the paper's two image views, batched on the batch's device."""

from vicreg.augment.images import PAPER_VIEW_A, PAPER_VIEW_B, SYMMETRIC_VIEW, PaperViews, ViewConfig

__all__ = ["PAPER_VIEW_A", "PAPER_VIEW_B", "SYMMETRIC_VIEW", "PaperViews", "ViewConfig"]
