"""One intra-op thread for in-process training in this suite: on a shared 2-core machine, two threads that
wait for each other make tiny steps ~10x slower (measured: 0.016 s vs 0.095-0.23 s per step)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
