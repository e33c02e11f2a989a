"""Progress of eval/embed/neighbors/report: stage lines, then progress lines under a fake clock (no terminal), a
tqdm bar on a terminal, nothing when disabled; every item is still yielded."""

from __future__ import annotations

import io

import pytest
import torch

from vicreg.probes.features import extract_features
from vicreg.progress import Progress, format_count, progress_line


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _batches(clock: FakeClock, sizes: list[int], seconds: float):
    for size in sizes:
        clock.now += seconds  # each batch "takes" this long
        yield list(range(size))


def test_without_a_terminal_lines_come_every_n_seconds_and_at_the_end() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(out, every=10.0, clock=clock)
    progress.stage("features of 1000 test images for vicreg")
    sizes = [100] * 10
    got = list(progress.track(_batches(clock, sizes, 4.0), "features vicreg", total=1000, unit="images", count=len))
    assert [len(b) for b in got] == sizes
    lines = out.getvalue().splitlines()
    assert lines[0] == "features of 1000 test images for vicreg"
    # 4 s per batch: a line after batches 3 (12 s), 6 (24 s), 9 (36 s), then the final line
    assert lines[1:] == [
        "features vicreg: 300/1k images (30%) | 25 images/s | 00:12, ETA 00:28",
        "features vicreg: 600/1k images (60%) | 25 images/s | 00:24, ETA 00:16",
        "features vicreg: 900/1k images (90%) | 25 images/s | 00:36, ETA 00:04",
        "features vicreg: 1k images in 00:40 (25 images/s)",
    ]


def test_a_fast_loop_prints_only_its_final_line_and_total_defaults_to_len() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(out, clock=clock)
    assert list(progress.track([1, 2, 3], "probes")) == [1, 2, 3]
    assert out.getvalue() == "probes: 3 batches in 00:00 (? batches/s)\n"


def test_unknown_totals_show_counts_without_eta() -> None:
    assert progress_line("rows", 1500, None, 3.0, "rows") == "rows: 1.5k rows | 500 rows/s | 00:03, ETA ?"
    assert format_count(950) == "950" and format_count(12_345) == "12.3k" and format_count(4_560_000) == "4.56M"


def test_on_a_terminal_a_bar_is_drawn_and_messages_go_above_it() -> None:
    out, bar_file = io.StringIO(), io.StringIO()
    progress = Progress(out, bar=True, bar_file=bar_file)
    progress.stage("linear probe")
    assert list(progress.track(range(5), "epochs", unit="epochs")) == list(range(5))
    assert "linear probe" in out.getvalue()
    assert "epochs" in bar_file.getvalue() and "5/5" in bar_file.getvalue()
    assert "5/5" not in out.getvalue()  # no progress lines beside a bar


def test_bar_is_the_default_only_when_both_streams_are_terminals() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress(Tty(), bar_file=Tty()).bar
    assert not Progress(io.StringIO(), bar_file=Tty()).bar  # a piped log gets lines
    assert not Progress(Tty(), bar_file=io.StringIO()).bar


def test_disabled_progress_is_silent_but_yields_everything() -> None:
    out = io.StringIO()
    progress = Progress(out, enabled=False)
    progress.stage("nothing")
    assert list(progress.track(iter(range(4)), "x")) == [0, 1, 2, 3]
    assert out.getvalue() == ""


def test_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every must be > 0"):
        Progress(io.StringIO(), every=0)


def test_feature_extraction_reports_rows_through_batches() -> None:
    """The hook the commands use: ``extract_features(..., track=progress.batches(...))`` counts rows, and the
    features are those computed without it."""
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(out, every=1.0, clock=clock)
    x = torch.arange(2 * 25, dtype=torch.float32).reshape(25, 2)

    def embed(batch: torch.Tensor) -> torch.Tensor:
        clock.now += 1.0  # one second per batch
        return batch * 2

    track = progress.batches("features vicreg", len(x), "rows")
    got = extract_features(embed, x, batch_size=10, track=track)
    assert torch.equal(got, extract_features(lambda b: b * 2, x, batch_size=10))
    assert out.getvalue().splitlines() == [
        "features vicreg: 10/25 rows (40%) | 10 rows/s | 00:01, ETA 00:01",
        "features vicreg: 20/25 rows (80%) | 10 rows/s | 00:02, ETA 00:00",
        "features vicreg: 25 rows in 00:03 (8.33 rows/s)",
    ]
