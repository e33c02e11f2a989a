"""Encoders for non-image inputs: :class:`ResNet1d` for signals ``(N, C, T)`` and :class:`MLPEncoder` for table
rows ``(N, F)``. Both map a batch to ``(N, feature_dim)`` features and are registered in
:data:`vicreg.models.BACKBONES` as ``"resnet1d"`` and ``"mlp"`` (``in_channels`` is the number of signal
channels, or of table features).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLPEncoder", "ResNet1d"]


class _Block1d(nn.Module):
    """Three ``Conv1d-BN`` layers (kernels 8, 5, 3 by default, 'same' padding), ReLU between, and a shortcut
    (``1x1 Conv-BN`` when the width changes); ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, kernel_sizes: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, k in enumerate(kernel_sizes):
            layers += [
                nn.Conv1d(c_in if i == 0 else c_out, c_out, k, padding="same", bias=False),
                nn.BatchNorm1d(c_out),
            ]
            if i < len(kernel_sizes) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet1d(nn.Module):
    """The residual network for time-series classification of Wang, Yan and Oates (IJCNN 2017), as an encoder.

    Three residual blocks at widths ``width, 2 * width, 2 * width`` (64, 128, 128 in the original), each of
    three convolutions with kernels ``kernel_sizes`` (8, 5, 3) and stride 1, then global average pooling over
    time: any length ``T`` works. The feature size is ``2 * width``. As the VICReg code does for its ResNets,
    the last BatchNorm of every block starts at zero (``zero_init_residual``), so each block starts as its
    shortcut.

    Args:
        in_channels: channels of the signal (sensors / variables).
        width: base width (64 in the original; 32 keeps it small for CPU runs).
        kernel_sizes: kernels of the three convolutions of a block.
        zero_init_residual: start the last BatchNorm of each block at zero.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        kernel_sizes: Sequence[int] = (7, 5, 3),
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels} and {width}")
        if not kernel_sizes or any(k < 1 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be a non-empty sequence of positive ints, got {kernel_sizes!r}")
        widths = (width, 2 * width, 2 * width)
        blocks, c_in = [], in_channels
        for c_out in widths:
            blocks.append(_Block1d(c_in, c_out, tuple(kernel_sizes)))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.feature_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for block in blocks:
                last_bn = block.body[-1]
                assert isinstance(last_bn, nn.BatchNorm1d)
                nn.init.zeros_(last_bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3:
            raise ValueError(f"ResNet1d expects a (N, C, T) signal batch, got shape {tuple(x.shape)}")
        return self.pool(self.blocks(x)).flatten(1)


class MLPEncoder(nn.Sequential):
    """A ReLU network for table rows: ``depth`` layers of ``Linear-BatchNorm1d-ReLU`` of ``width`` units.

    SCARF (Bahri et al., ICLR 2022) pretrains a 4-layer, 256-unit ReLU network; ``depth=3, width=128`` keeps
    CPU runs quick. The feature size is ``width``.
    """

    def __init__(self, in_features: int, width: int = 256, depth: int = 4) -> None:
        if in_features < 1 or width < 1 or depth < 1:
            raise ValueError(f"in_features, width and depth must be >= 1, got {in_features}, {width} and {depth}")
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.in_features = in_features
        self.feature_dim = width

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"MLPEncoder expects (N, {self.in_features}) table rows, got shape {tuple(x.shape)}; flatten "
                "or select the feature columns first"
            )
        return super().forward(x)
