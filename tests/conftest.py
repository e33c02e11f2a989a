"""Test-suite hooks: tests marked ``@pytest.mark.cuda`` are skipped where there is no CUDA device; the session's
shared tiny runs (``tiny_runs``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.helpers import TinyRuns


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m cuda` on a GPU machine)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRuns]:
    """The session's tiny trained runs, one per data kind, each trained on first use (see helpers.TinyRuns)."""
    runs = TinyRuns(tmp_path_factory.mktemp("tiny-runs"))
    yield runs
    runs.check_untouched()
