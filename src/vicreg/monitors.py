"""What training watches besides the loss: an online linear probe and a kNN monitor of the representation.

Both are leaves: they take tensors and modules, never a config. The build layer decides which data feeds them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vicreg.probes.features import extract_features
from vicreg.probes.knn import knn_accuracy

__all__ = ["KnnMonitor", "OnlineProbe"]


class OnlineProbe:
    """A linear classifier trained beside VICReg on the *detached* representation of view A.

    It reads the backbone's output through a forward hook and has its own optimiser, so it never touches the
    VICReg gradient; its running accuracy on the training batches shows whether the representation becomes
    linearly useful while training. Samples labelled ``-1`` (unlabelled) are ignored. Under torchrun each
    process trains its own probe on its shard; rank 0's is logged and checkpointed.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, device: torch.device) -> None:
        self.linear = nn.Linear(feature_dim, num_classes).to(device)
        self.optimizer = torch.optim.AdamW(self.linear.parameters(), lr=1e-3, weight_decay=0.0)
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, correct, count
        self._armed = False
        self._h: Tensor | None = None
        backbone.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: Any, out: Tensor) -> None:
        if self._armed:  # the first backbone call after arm(): view A
            self._h, self._armed = out.detach(), False

    def arm(self) -> None:
        self._armed, self._h = True, None

    def step(self, labels: Tensor | None) -> None:
        h, self._h, self._armed = self._h, None, False
        if h is None or labels is None:
            return
        labels = labels.to(h.device, non_blocking=True).long()
        with torch.autocast(h.device.type, enabled=False):
            logits = self.linear(h.float().flatten(1))
            known = labels >= 0
            loss_sum = F.cross_entropy(logits, labels.clamp_min(0), reduction="none").mul(known).sum()
            count = known.sum()
            self.optimizer.zero_grad(set_to_none=True)
            (loss_sum / count.clamp_min(1)).backward()
            self.optimizer.step()
        correct = ((logits.argmax(1) == labels) & known).sum()
        self.sums += torch.stack([loss_sum.detach(), correct, count]).double()

    def read(self) -> dict[str, float]:
        """Mean loss and accuracy (%) since the last read (one host sync)."""
        loss, correct, count = self.sums.tolist()
        self.sums.zero_()
        if count == 0:
            return {}
        return {"probe.loss": loss / count, "probe.acc": 100.0 * correct / count}

    def state_dict(self) -> dict[str, Any]:
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])


class KnnMonitor:
    """kNN top-1/top-5 (k = 20, cosine, temperature 0.07) of the current representation, on seeded subsets.

    The protocol differs from ``vicreg eval`` on purpose (it runs every few epochs): at most ``n_train``
    neighbours and ``n_test`` queries, drawn once with seed 0. When the data has no test split
    (``test_rows is None``) the queries are training rows held out from the neighbour bank. :attr:`protocol`
    says it in words, and every result row names it.

    Args:
        train_rows, train_labels: labelled training rows (uint8 images or float signals / table rows).
        test_rows, test_labels: the labelled test split, or ``None``: hold out training rows.
        mean, std: the normalisation of the encoder's input (as in training).
    """

    def __init__(
        self,
        train_rows: Tensor,
        train_labels: Tensor,
        test_rows: Tensor | None,
        test_labels: Tensor | None,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        n_train: int = 10_000,
        n_test: int = 2_000,
        k: int = 20,
    ) -> None:
        g = torch.Generator().manual_seed(0)
        if test_rows is None or test_labels is None:  # queries and neighbours: disjoint training rows
            perm = torch.randperm(len(train_rows), generator=g)
            q = min(n_test, max(1, len(perm) // 5))
            test_idx, train_idx = perm[:q], perm[q : q + n_train]
            test_rows, test_labels = train_rows, train_labels
            where = "held-out training rows"
        else:
            train_idx = torch.randperm(len(train_rows), generator=g)[:n_train]
            test_idx = torch.randperm(len(test_rows), generator=g)[:n_test]
            where = "the test split"
        self.train_rows, self.train_labels = _take(train_rows, train_idx), _take(train_labels, train_idx).cpu()
        self.test_rows, self.test_labels = _take(test_rows, test_idx), _take(test_labels, test_idx).cpu()
        self.mean, self.std, self.k = tuple(mean), tuple(std), k
        self.protocol = (
            f"online kNN (k={k}, cosine, T=0.07): {len(train_idx)} training rows as neighbours, "
            f"{len(test_idx)} queries from {where} (seeded subsets; vicreg eval uses every row)"
        )

    @torch.no_grad()
    def __call__(
        self, embed: Callable[[Tensor], Tensor], device: torch.device, autocast_dtype: torch.dtype | None = None
    ) -> dict[str, float]:
        """``{"knn.top1": .., "knn.top5": ..}`` of ``embed`` (the caller puts the model in eval mode)."""
        kw: dict[str, Any] = {"device": device, "mean": self.mean, "std": self.std, "autocast_dtype": autocast_dtype}
        f_train = extract_features(embed, self.train_rows, **kw)
        f_test = extract_features(embed, self.test_rows, **kw)
        acc = knn_accuracy(f_train, self.train_labels, f_test, self.test_labels, k=self.k)
        return {f"knn.{name}": value for name, value in acc.items()}


def _take(x: Tensor, idx: Tensor) -> Tensor:
    return x[idx.to(x.device)]
