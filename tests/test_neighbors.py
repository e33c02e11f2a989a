"""Retrieval on frozen features: nearest neighbours and duplicates against a naive full-matrix reference, planted
duplicates, the CSV files and the figures (their PNG size is known in advance)."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vicreg.plots import (
    NeighborPanel,
    duplicate_pairs_figure,
    grid_size,
    neighbor_grid,
    neighbor_grids_compare,
    save_figure,
    signal_neighbors_figure,
)
from vicreg.probes.retrieval import (
    DuplicatePairs,
    find_duplicates,
    format_neighbors,
    label_agreement,
    nearest_neighbors,
    parse_queries,
    pixel_features,
    random_queries,
    write_duplicates_csv,
    write_neighbors_csv,
)

# ------------------------------------------------------------------------------------------------ naive references


def _naive_sim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The whole cosine similarity matrix in float64."""
    a64, b64 = a.double(), b.double()
    a64 = a64 / a64.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b64 = b64 / b64.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (a64 @ b64.T).numpy()


def _naive_neighbors(
    bank: torch.Tensor, queries: torch.Tensor, k: int, self_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    sim = _naive_sim(queries, bank)
    if self_rows is not None:
        sim[np.arange(len(self_rows)), self_rows] = -np.inf
    # lexsort: last key first; descending similarity, then lower index
    order = np.stack([np.lexsort((np.arange(sim.shape[1]), -row)) for row in sim])[:, :k]
    return np.take_along_axis(sim, order, 1), order


def _naive_pairs(x: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    sim = _naive_sim(x, x)
    pairs = [(i, j, sim[i, j]) for i in range(len(x)) for j in range(i + 1, len(x)) if sim[i, j] >= threshold]
    return [(i, j) for i, j, _ in sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))]


# ------------------------------------------------------------------------------------------------ nearest_neighbors


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_nearest_neighbors_matches_the_full_matrix(block: int) -> None:
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50, 6, generator=g), torch.randn(13, 6, generator=g)
    sim, idx = nearest_neighbors(bank, queries, 5, block=block)
    ref_sim, ref_idx = _naive_neighbors(bank, queries, 5)
    assert sim.dtype == torch.float32 and idx.dtype == torch.int64 and sim.shape == idx.shape == (13, 5)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sim.numpy(), ref_sim, atol=1e-6)
    assert (sim[:, :-1] >= sim[:, 1:]).all()


def test_nearest_neighbors_exclude_self_matches_the_masked_matrix() -> None:
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(40, 5, generator=g)
    rows = torch.tensor([0, 7, 8, 39, 20])
    sim, idx = nearest_neighbors(bank, bank[rows], 39, exclude_self=True, query_index=rows, block=6)
    ref_sim, ref_idx = _naive_neighbors(bank, bank[rows], 39, self_rows=rows.numpy())
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sim.numpy(), ref_sim, atol=1e-6)
    assert not (idx == rows[:, None]).any()


def test_ties_go_to_the_lower_index_across_blocks() -> None:
    # rows are e0 or e1 (scaled): every similarity is exactly 1 or 0, so ties are everywhere, also at the k-th place
    pattern = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1])
    bank = torch.stack([pattern.float(), 1.0 - pattern.float()], dim=1) * torch.arange(1, 21).float()[:, None]
    queries = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    ones, zeros = pattern.nonzero().flatten().tolist(), (1 - pattern).nonzero().flatten().tolist()
    # k = 9 and 11: the ties sit inside the top k only (for query 0 and 1); 5 and 12: across the k-th place
    for k, block in itertools.product((5, 9, 11, 12), (1, 3, 7, 64)):
        sim, idx = nearest_neighbors(bank, queries, k, block=block)
        assert idx[0].tolist() == [*ones, *zeros][:k]
        assert idx[1].tolist() == [*zeros, *ones][:k]
        assert sim[0].tolist() == ([1.0] * len(ones) + [0.0] * k)[:k]


def test_a_query_in_the_bank_is_its_own_nearest_at_similarity_one() -> None:
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(30, 16, generator=g) * 10
    rows = torch.tensor([3, 0, 29, 11])
    sim, idx = nearest_neighbors(bank, bank[rows], 4, block=8)
    assert idx[:, 0].tolist() == rows.tolist()
    torch.testing.assert_close(sim[:, 0], torch.ones(4), atol=1e-6, rtol=0)
    assert (sim[:, 1] < 0.999).all()


def test_k_is_clipped_to_the_bank_and_bad_arguments_raise() -> None:
    bank = torch.randn(4, 3)
    sim, idx = nearest_neighbors(bank, bank[:2], 10)
    assert sim.shape == (2, 4) and sorted(idx[0].tolist()) == [0, 1, 2, 3]
    assert nearest_neighbors(bank, bank[:2], 10, exclude_self=True, query_index=[0, 1])[1].shape == (2, 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        nearest_neighbors(bank, bank, 0)
    with pytest.raises(ValueError, match="too few"):
        nearest_neighbors(bank[:1], bank[:1], 1, exclude_self=True, query_index=[0])
    with pytest.raises(ValueError, match="query_index"):
        nearest_neighbors(bank, bank, 1, exclude_self=True)
    with pytest.raises(ValueError, match="same width"):
        nearest_neighbors(bank, torch.randn(2, 4), 1)
    with pytest.raises(ValueError, match="NaN"):
        nearest_neighbors(bank, torch.full((1, 3), float("nan")), 1)
    with pytest.raises(ValueError, match="floating point"):
        nearest_neighbors(bank.long(), bank, 1)


def test_half_precision_bank_gives_the_same_neighbours() -> None:
    g = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(64, 8, generator=g), torch.randn(5, 8, generator=g)
    _, idx = nearest_neighbors(bank.double(), queries, 3)
    sim_half, idx_half = nearest_neighbors(bank.half(), queries, 3, block=16)
    assert sim_half.dtype == torch.float32
    assert (idx_half[:, 0] == idx[:, 0]).all()


# ------------------------------------------------------------------------------------------------ duplicates


@pytest.mark.parametrize(("threshold", "block"), [(0.5, 5), (0.2, 1), (0.0, 64), (0.9, 7)])
def test_find_duplicates_matches_the_full_matrix(threshold: float, block: int) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 4, generator=g)
    pairs = find_duplicates(x, threshold, block=block)
    assert [(i, j) for i, j, _ in pairs] == _naive_pairs(x, threshold)
    assert all(i < j for i, j, _ in pairs)
    sims = pairs.similarity
    assert (sims[:-1] >= sims[1:]).all() and len(pairs) == len(pairs.first) == len(pairs.second)


def test_find_duplicates_max_pairs_keeps_the_most_similar() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(60, 3, generator=g)
    everything = find_duplicates(x, 0.0, block=4)
    top = find_duplicates(x, 0.0, block=4, max_pairs=25)  # prunes along the way (25 * 2 + 4 < pairs per row block)
    assert len(everything) > 200 and top.tolist() == everything.tolist()[:25]
    assert len(find_duplicates(x, 0.0, max_pairs=0)) == 0


def test_find_duplicates_validates_the_threshold() -> None:
    for bad in (-1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            find_duplicates(torch.randn(3, 2), bad)
    assert len(find_duplicates(torch.randn(0, 2), 0.9)) == 0


def _planted() -> tuple[torch.Tensor, set[tuple[int, int]], set[tuple[int, int]]]:
    """40 random 16x16 colour images with planted copies: exact ones, and near ones (a few grey levels off)."""
    g = torch.Generator().manual_seed(6)
    images = torch.randint(0, 256, (40, 3, 16, 16), generator=g, dtype=torch.uint8)
    images[17] = images[5]
    images[12] = images[11]
    images[25] = images[11]
    noise = torch.randint(-3, 4, (3, 16, 16), generator=g)
    images[30] = (images[2].int() + noise).clamp(0, 255).to(torch.uint8)
    exact = {(5, 17), (11, 12), (11, 25), (12, 25)}
    return images, exact, exact | {(2, 30)}


def test_planted_duplicates_are_found_exactly() -> None:
    images, exact, near = _planted()
    features = pixel_features(images)
    found = find_duplicates(features, 0.98, block=16)
    assert {(i, j) for i, j, _ in found} == near
    assert found.tolist()[-1][:2] == (2, 30)  # the near copy is the least similar of them
    assert {(i, j) for i, j, _ in find_duplicates(features, 1.0, block=7)} == exact
    # the unplanted pairs are far below: the threshold is not tuned to the data
    assert len(find_duplicates(features, 0.5)) == len(near)


# ------------------------------------------------------------------------------------------------ helpers and CSVs


def test_pixel_features_standardise_per_channel_and_downsample() -> None:
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
    x = pixel_features(images, chunk=6).view(20, 3, 64)
    torch.testing.assert_close(x.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    small = pixel_features(images, mean=[0.5] * 3, std=[0.25] * 3, size=2)
    expected = (images.float().view(20, 3, 2, 4, 2, 4).mean(dim=(3, 5)) / 255 - 0.5) / 0.25
    torch.testing.assert_close(small, expected.flatten(1))
    with pytest.raises(ValueError, match="uint8"):
        pixel_features(images.float())


def test_label_agreement_and_random_queries() -> None:
    indices = torch.tensor([[0, 1], [2, 3]])
    assert label_agreement(indices, torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1])) == 0.75
    a, b = random_queries(100, 8, seed=3), random_queries(100, 8, seed=3)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 8 and max(a.tolist()) < 100
    assert len(random_queries(5, 8)) == 5


def test_format_neighbors_marks_other_classes() -> None:
    indices, sims = torch.tensor([[4, 1], [0, 2]]), torch.tensor([[1.0, 0.5], [0.25, -0.125]])
    text = format_neighbors(
        [7, "cat.png"], indices, sims, labels_bank=torch.tensor([0, 1, 1, 0, 0]), labels_query=torch.tensor([0, 1])
    )
    assert text.splitlines() == [
        "7 [0]: 4 (1.000), 1 (0.500)*",
        "cat.png [1]: 0 (0.250)*, 2 (-0.125)",
        "neighbours sharing their query's label: 50.0% (* marks another class)",
    ]
    assert format_neighbors([7, 8], indices, sims, show=1) == "7: 4 (1.000)\n8: 0 (0.250)"


def test_parse_queries_tells_indices_from_files(tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(b"x")
    numbered = tmp_path / "12"
    numbered.write_bytes(b"x")
    assert parse_queries(["3", str(image), " 0", str(numbered)], n_bank=10) == [3, image, 0, numbered]
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        parse_queries(["10"], n_bank=10)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        parse_queries([str(tmp_path / "missing.png")], n_bank=10)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_neighbors_csv_has_one_row_per_query_and_rank(tmp_path: Path) -> None:
    indices = torch.tensor([[4, 1], [0, 2]])
    sims = torch.tensor([[1.0, 0.5], [0.25, -0.125]])
    out = write_neighbors_csv(tmp_path / "n.csv", [7, "cat.png"], indices, sims)
    rows = _read_csv(out)
    assert [tuple(r.values()) for r in rows] == [
        ("7", "1", "4", "1.000000"),
        ("7", "2", "1", "0.500000"),
        ("cat.png", "1", "0", "0.250000"),
        ("cat.png", "2", "2", "-0.125000"),
    ]
    labelled = _read_csv(
        write_neighbors_csv(tmp_path / "l.csv", [7, 8], indices, sims, torch.tensor([0, 1, 1, 0, 2]), [2, 0])
    )
    header = ["query", "rank", "neighbor", "similarity", "neighbor_label", "query_label", "same_label"]
    assert list(labelled[0]) == header
    pairs = [(r["neighbor_label"], r["same_label"]) for r in labelled]
    assert pairs == [("2", "1"), ("1", "0"), ("0", "1"), ("1", "0")]
    with pytest.raises(ValueError, match="query id"):
        write_neighbors_csv(tmp_path / "x.csv", [1], indices, sims)


def test_duplicates_csv_lists_pairs_in_order(tmp_path: Path) -> None:
    pairs = DuplicatePairs(torch.tensor([1, 0]), torch.tensor([3, 2]), torch.tensor([0.999, 0.97]))
    rows = _read_csv(write_duplicates_csv(tmp_path / "d.csv", pairs, names=["a.png", "b.png", "c.png", "d.png"]))
    assert [tuple(r.values()) for r in rows] == [
        ("1", "1", "3", "0.999000", "b.png", "d.png"),
        ("2", "0", "2", "0.970000", "a.png", "c.png"),
    ]
    assert _read_csv(write_duplicates_csv(tmp_path / "e.csv", find_duplicates(torch.randn(3, 2), 1.0))) == []


# ------------------------------------------------------------------------------------------------ figures


def _grid_inputs(q: int, k: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(8)
    images = torch.randint(0, 256, (q + q * k, channels, 12, 10), generator=g, dtype=torch.uint8)
    sims = torch.linspace(1, 0, k).repeat(q, 1)
    return images[:q], images[q:].view(q, k, channels, 12, 10), sims


def test_neighbor_grid_png_has_the_documented_size(tmp_path: Path) -> None:
    queries, neighbours, sims = _grid_inputs(3, 4, 3)
    fig = neighbor_grid(queries, neighbours, sims, title="three queries", cell=1.0, dpi=50)
    out = save_figure(fig, tmp_path / "grid.png")
    # 5 cells of 1 inch across; 3 rows plus a 0.35-inch title band; 50 dots per inch
    assert Image.open(out).size == (250, 167) == grid_size(3, 4, title=True, cell=1.0, dpi=50)
    grey = neighbor_grid(queries[:, :1], neighbours[:, :, :1], sims, cell=1.3, dpi=97)
    assert Image.open(save_figure(grey, tmp_path / "grey.png")).size == grid_size(3, 4, cell=1.3, dpi=97)


def test_side_by_side_panels_have_the_documented_size_and_mark_wrong_classes(tmp_path: Path) -> None:
    queries, neighbours, sims = _grid_inputs(2, 3, 3)
    right = torch.tensor([[0, 0, 0], [1, 1, 1]])
    wrong = torch.tensor([[0, 1, 0], [1, 1, 1]])  # one neighbour of another class: row 0, rank 2
    panels = {
        "VICReg encoder": NeighborPanel(neighbours, sims, right),
        "raw pixels": NeighborPanel(neighbours, sims, wrong),
    }
    fig = neighbor_grids_compare(
        queries,
        panels,
        query_labels=torch.tensor([0, 1]),
        class_names=["cat", "dog"],
        cell=1.0,
        dpi=40,
    )
    out = save_figure(fig, tmp_path / "compare.png")
    # two panels of 4 cells, 0.25 inch apart; 2 rows plus the 0.3-inch band of panel headings
    assert Image.open(out).size == (330, 92) == grid_size(2, 3, panels=2, headings=True, cell=1.0, dpi=40)
    red = [ax for ax in fig.axes if ax.spines["top"].get_visible() and ax.title.get_color() != "black"]
    assert len(fig.axes) == 2 * 2 * 4 and len(red) == 1 and red[0].get_xlabel() == "dog"
    framed = [ax for ax in fig.axes if ax.spines["top"].get_visible()]
    assert len(framed) == 2 * 2 + 1  # each query is framed too
    assert [ax.get_title() for ax in fig.axes[:4]] == ["query", "1.000", "0.500", "0.000"]


def test_grid_rejects_mismatched_inputs() -> None:
    queries, neighbours, sims = _grid_inputs(2, 3, 3)
    with pytest.raises(ValueError, match="uint8"):
        neighbor_grid(queries.float(), neighbours, sims)
    with pytest.raises(ValueError, match="similarities"):
        neighbor_grid(queries, neighbours, sims[:, :2])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        neighbor_grid(queries[:, :2], neighbours[:, :, :2], sims)


def test_duplicate_pairs_figure_renders(tmp_path: Path) -> None:
    images, _, _ = _planted()
    pairs = find_duplicates(pixel_features(images), 0.98)
    fig = duplicate_pairs_figure(
        images[pairs.first],
        images[pairs.second],
        pairs.similarity,
        names=[(f"img{i}.png", f"img{j}.png") for i, j, _ in pairs],
        per_row=2,
        title="near duplicates",
        cell=1.0,
        dpi=40,
    )
    # 5 pairs in 3 rows of 2 pairs: 4.25 inches wide, 3 + 0.35 (title) high, at 40 dots per inch
    assert Image.open(save_figure(fig, tmp_path / "dup.png")).size == (170, 3 * 40 + 14)
    assert len(fig.axes) == 2 * len(pairs)
    empty = duplicate_pairs_figure(images[:0], images[:0], [], dpi=40)
    assert save_figure(empty, tmp_path / "none.png").is_file()


def test_signal_neighbors_figure_renders(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(9)
    series = torch.randn(30, 4, 50, generator=g).cumsum(-1)
    sims, idx = nearest_neighbors(series.flatten(1), series[:2].flatten(1), 5)
    labels = torch.arange(30) % 2
    fig = signal_neighbors_figure(
        series[:2], series[idx], sims, query_labels=labels[:2], neighbor_labels=labels[idx], max_channels=2, title="s"
    )
    out = save_figure(fig, tmp_path / "signals.png")
    assert Image.open(out).size[0] > 100
    assert len(fig.axes) == 2 * 2  # two queries, channels capped at 2
    assert len(fig.axes[0].lines) == 5 + 1
    assert fig.axes[0].get_title(loc="left").startswith("query 0 (0): nearest 1.000")
    with pytest.raises(ValueError, match="do not match"):
        signal_neighbors_figure(series[:1], series[idx], sims)
