"""Renamed public names still import for one release: the same object as the new name, with a DeprecationWarning
that names the new name. ``PaperViews`` is not deprecated (the design's public API): it is ``ImageViews``, silently.
"""

from __future__ import annotations

import importlib
import warnings

import pytest

# (module, old name, new name): every module that defined or exported the old name.
RENAMED = [
    ("vicreg", "TabularViews", "TableViews"),
    ("vicreg", "ViewConfig", "OneViewConfig"),
    ("vicreg.augment", "TabularViews", "TableViews"),
    ("vicreg.augment", "ViewConfig", "OneViewConfig"),
    ("vicreg.augment.tabular", "TabularViews", "TableViews"),
    ("vicreg.augment.images", "ViewConfig", "OneViewConfig"),
    ("vicreg.data", "ArrayDataset", "ImageDataset"),
    ("vicreg.data", "FloatArrayDataset", "FloatDataset"),
    ("vicreg.data", "load_arrays", "load_float_rows"),
    ("vicreg.data.arrays", "ArrayDataset", "ImageDataset"),
    ("vicreg.data.arrays", "FloatArrayDataset", "FloatDataset"),
    ("vicreg.data.sources", "load_arrays", "load_float_rows"),
    ("vicreg.data.hf", "load_hf_arrays", "load_hf_images"),
]


@pytest.mark.parametrize(("module", "old", "new"), RENAMED, ids=[f"{m}.{o}" for m, o, _ in RENAMED])
def test_an_old_name_imports_as_the_new_object_and_warns(module: str, old: str, new: str) -> None:
    if module == "vicreg.data.hf":
        pytest.importorskip("datasets")
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{old} is renamed {module}\.{new}\b"):
        obj = getattr(mod, old)
    assert obj is getattr(mod, new)
    assert new in mod.__all__ and old not in mod.__all__
    with pytest.warns(DeprecationWarning, match=new):
        exec(f"from {module} import {old}", {})  # the `from` form goes through the same hook


@pytest.mark.parametrize("module", ["vicreg", "vicreg.augment", "vicreg.augment.images"])
def test_paper_views_is_image_views_without_a_warning(module: str) -> None:
    mod = importlib.import_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mod.PaperViews is mod.ImageViews
        exec(f"from {module} import PaperViews", {})
    assert "PaperViews" in mod.__all__ and "ImageViews" in mod.__all__


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    import vicreg.data

    with pytest.raises(AttributeError, match="no attribute 'ArrayDatasets'"):
        _ = vicreg.data.ArrayDatasets  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from vicreg.augment import NoSuchViews", {})
