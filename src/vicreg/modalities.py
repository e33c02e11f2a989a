"""Signals, tables and two-modality pairs in the one training path of :func:`vicreg.train.train`.

``train.build_data``, ``build_views`` and ``_knn_monitor`` hand over to these functions when ``cfg.modality`` is
not ``image`` or ``cfg.modality_b`` is set; the training loop is the same for every modality:

* data: :func:`vicreg.data.arrays_float.load_arrays` (``.npz``, ``aeon:<Name>``, ``sklearn:<name>``) or
  :func:`~vicreg.data.arrays_float.load_pairs`, batched by :class:`~vicreg.data.arrays_float.ArrayLoader` on the
  training device;
* views: :class:`~vicreg.augment.SignalViews` / :class:`~vicreg.augment.TabularViews` for one modality; for a
  pair, :class:`~vicreg.augment.PairViews` with branch A's view of ``x_a`` (the config's view A) and branch B's
  view of ``x_b`` (view B); an image side uses :class:`~vicreg.PaperViews`;
* kNN monitor: branch A's representation of the held-out split, standardised with the training statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from vicreg.augment import PairViews, SignalViews, TabularViews, TensorPair
from vicreg.augment.pairs import OneView
from vicreg.augment.tabular import TableViewConfig
from vicreg.config import TrainConfig
from vicreg.data import ArrayDataset
from vicreg.data.arrays_float import ArrayLoader, FloatArrayDataset, load_arrays, load_pairs
from vicreg.distributed import DistInfo

if TYPE_CHECKING:
    from vicreg.models import VICReg
    from vicreg.train import _Data

__all__ = ["build_array_data", "build_array_views", "knn_monitor_arrays"]

Side = ArrayDataset | FloatArrayDataset


def _side(x: np.ndarray, labels: Tensor | None, modality: str, name: str) -> Side:
    """One side of a pair as the dataset type of its modality."""
    if modality == "image":
        return ArrayDataset.from_arrays(x, labels, name=name)
    return FloatArrayDataset.from_arrays(x, labels, kind="signal" if modality == "signal" else "table", name=name)


def _rows(side: Side) -> Tensor:
    return side.images if isinstance(side, ArrayDataset) else side.x


def build_array_data(cfg: TrainConfig, info: DistInfo, device: torch.device) -> _Data:
    """The training loader (and kNN-monitor splits) of signal / table data or of a two-modality pair file."""
    from vicreg.train import _Data

    per_rank = cfg.batch_size // info.world_size
    shard: dict[str, Any] = {"seed": cfg.seed, "rank": info.rank, "world_size": info.world_size}
    monitor = bool(cfg.eval_split) and cfg.knn_every > 0
    test: Side | None = None
    if cfg.modality_b:
        x_a, x_b, labels = load_pairs(cfg.data, "train")
        side_a = _side(x_a, labels, cfg.modality, f"{cfg.data}:x_a")
        side_b = _side(x_b, None, cfg.modality_b, f"{cfg.data}:x_b")
        rows: Tensor | TensorPair = TensorPair(_rows(side_a).to(device), _rows(side_b).to(device))
        train_set: Any = (side_a, side_b)
        if monitor and labels is not None:
            try:
                t_a, _, t_labels = load_pairs(cfg.data, cfg.eval_split)
                test = _side(t_a, t_labels, cfg.modality, f"{cfg.data}:x_a_{cfg.eval_split}")
            except KeyError:  # no test arrays in the file: no monitor
                test = None
    else:
        side_a = load_arrays(cfg.data, "train", kind="signal" if cfg.modality == "signal" else "table")
        side_b, rows, train_set = side_a, side_a.x.to(device), side_a
        if monitor and side_a.labels is not None:
            try:
                test = load_arrays(cfg.data, cfg.eval_split, kind=side_a.kind)
            except KeyError:
                test = None
    if len(side_a) < cfg.batch_size:
        raise ValueError(
            f"{cfg.data} has {len(side_a)} training rows, fewer than one batch of {cfg.batch_size}; lower --batch-size"
        )
    loader = ArrayLoader(rows, None, per_rank, shuffle=True, drop_last=True, **shard)
    data = _Data(loader, side_a.channels, side_a.mean, side_a.std, channels_b=side_b.channels, train_set=train_set)
    if test is not None and test.labels is not None and side_a.labels is not None:
        data.eval_train, data.eval_test = side_a, test
    return data


def _signal_views(cfg: TrainConfig, side: FloatArrayDataset) -> SignalViews:
    v = cfg.signal_views.view_config()
    return SignalViews(cfg.signal_views.length or None, view_a=v, view_b=v, mean=side.mean, std=side.std)


def _table_views(cfg: TrainConfig, side: FloatArrayDataset) -> TabularViews:
    v: TableViewConfig = cfg.table_views.view_config()
    view_a = (
        TableViewConfig(corrupt_rate=0.0, noise_std=v.noise_std, mask_p=v.mask_p) if cfg.table_views.anchor_a else v
    )
    return TabularViews(side.x, view_a=view_a, view_b=v)


def _one_view(cfg: TrainConfig, modality: str, side: Side, branch: str) -> OneView:
    """Branch ``branch``'s single view of its side of a pair."""
    views: Any
    if modality == "image":
        from vicreg.train import _Data, build_views

        assert isinstance(side, ArrayDataset)
        views = build_views(cfg, _Data(None, side.channels, side.mean, side.std))
    elif modality == "signal":
        assert isinstance(side, FloatArrayDataset)
        views = _signal_views(cfg, side)
    else:
        assert isinstance(side, FloatArrayDataset)
        views = _table_views(cfg, side)
    config = views.view_a if branch == "a" else views.view_b
    return lambda x, generator: views.view(x, config, generator)


def build_array_views(cfg: TrainConfig, data: _Data) -> SignalViews | TabularViews | PairViews:
    """The views of :func:`build_array_data`'s batches."""
    if cfg.modality_b:
        side_a, side_b = data.train_set
        return PairViews(_one_view(cfg, cfg.modality, side_a, "a"), _one_view(cfg, cfg.modality_b, side_b, "b"))
    side = data.train_set
    return _signal_views(cfg, side) if cfg.modality == "signal" else _table_views(cfg, side)


def knn_monitor_arrays(
    model: VICReg, data: _Data, device: torch.device, amp_dtype: torch.dtype | None
) -> dict[str, float] | None:
    """kNN top-1 (k = 20) of branch A's representation of float data on the held-out split."""
    from vicreg.evaluate import extract_array_features, knn_accuracy

    train_set, test_set = data.eval_train, data.eval_test
    if train_set is None or test_set is None:
        return None
    model.eval()
    g = torch.Generator().manual_seed(0)
    train_idx = torch.randperm(len(train_set), generator=g)[:10_000]
    test_idx = torch.randperm(len(test_set), generator=g)[:2_000]
    kwargs: dict[str, Any] = {"device": device, "mean": data.mean, "std": data.std, "autocast_dtype": amp_dtype}
    f_train = extract_array_features(model.embed, train_set.x[train_idx], **kwargs)
    f_test = extract_array_features(model.embed, test_set.x[test_idx], **kwargs)
    acc = knn_accuracy(f_train, train_set.labels[train_idx], f_test, test_set.labels[test_idx], k=20)
    return {f"knn.{k}": v for k, v in acc.items()}
