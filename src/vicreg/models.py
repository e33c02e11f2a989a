"""Encoders and the expander: the backbone registry, :class:`Expander` and the :class:`VICReg` model.

Faithfulness to the official implementation (facebookresearch/vicreg ``main_vicreg.py``):

* the expander is ``Linear-BatchNorm1d-ReLU`` per hidden layer and a last ``Linear`` without bias, built
  from a spec such as ``"8192-8192-8192"`` whose input is the backbone's feature size;
* ResNets are created with ``zero_init_residual=True`` and their classifier removed, so the representation
  is the 512 (ResNet-18/34) or 2048 (ResNet-50) global-average-pooled features;
* the two views go through the encoder in two separate calls, so BatchNorm statistics are per view.

Multi-crop (:meth:`VICReg.forward_multi`): the small local crops run as one batch through branch b without
updating any running statistics, so the statistics used at evaluation come from the global views alone.

A backbone is a torchvision ResNet by name (``"resnet18"``, ``"resnet34"``, ``"resnet50"``), the small
CPU-friendly :class:`SmallCNN` (``"small_cnn"``), a timm model (``"timm:<name>"``, needs ``pip install timm``)
or any ``nn.Module`` that maps a batch to ``(N, feature_dim)`` features.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, overload

import torch
from torch import Tensor, nn
from torchvision import models as tv_models

from vicreg.encoders import MLPEncoder, ResNet1d

__all__ = [
    "BACKBONES",
    "EncoderSpec",
    "Expander",
    "SmallCNN",
    "VICReg",
    "build_backbone",
    "feature_dim_of",
    "frozen_running_stats",
    "infer_feature_dim",
    "parse_expander_spec",
]


# --------------------------------------------------------------------------------------------- expander


def parse_expander_spec(spec: str | Sequence[int]) -> tuple[int, ...]:
    """Layer widths of an expander: ``"8192-8192-8192"`` -> ``(8192, 8192, 8192)``.

    The spec lists the output width of every layer (the input width is the backbone's feature size), as in
    the official ``--mlp`` argument. A sequence of ints is accepted as well.
    """
    if isinstance(spec, str):
        tokens = spec.strip().split("-")
        if not spec.strip() or not all(re.fullmatch(r"[0-9]+", t) for t in tokens):
            raise ValueError(
                f"invalid expander spec {spec!r}: expected positive integers joined by '-', "
                "e.g. '8192-8192-8192' (the paper) or '2048-2048-2048'"
            )
        widths = tuple(int(t) for t in tokens)
    else:
        widths = tuple(spec)
        if not widths or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
            raise ValueError(
                f"invalid expander spec {spec!r}: expected a non-empty sequence of ints, e.g. [8192, 8192, 8192]"
            )
    if any(w < 1 for w in widths):
        raise ValueError(f"invalid expander spec {spec!r}: every layer width must be >= 1")
    return widths


class Expander(nn.Sequential):
    """The official VICReg expander (``Projector`` in facebookresearch/vicreg).

    For widths ``in_features-w1-...-wk``: ``Linear(bias) -> BatchNorm1d -> ReLU`` for each hidden layer and a
    final ``Linear(bias=False)``. Being an ``nn.Sequential``, its state-dict keys (``0.weight``,
    ``1.running_mean``, ...) are those of the official ``projector``.

    >>> Expander(512, "64-64")
    Expander(
      (0): Linear(in_features=512, out_features=64, bias=True)
      (1): BatchNorm1d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
      (2): ReLU(inplace=True)
      (3): Linear(in_features=64, out_features=64, bias=False)
    )
    """

    def __init__(self, in_features: int, spec: str | Sequence[int] = "8192-8192-8192") -> None:
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive int (the backbone feature size), got {in_features!r}")
        widths = (in_features, *parse_expander_spec(spec))
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(widths[:-1]):
            layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = widths[-1]


# --------------------------------------------------------------------------------------------- backbones


class SmallCNN(nn.Module):
    """A small, fast CNN for CPU runs and 28-96 px images (Fashion-MNIST, CIFAR, STL-10).

    Four stages of ``Conv3x3-BN-ReLU`` blocks at widths ``w, 2w, 4w, 8w``; stages 2-4 start with a stride-2
    convolution and add a second convolution at the same width; then global average pooling. The feature size
    is ``8 * width`` (256 at the default ``width=32``, about 1.2 M parameters).
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels} and {width}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks = [_conv_bn_relu(in_channels, widths[0], stride=1)]
        for c_in, c_out in itertools.pairwise(widths):
            blocks += [_conv_bn_relu(c_in, c_out, stride=2), _conv_bn_relu(c_out, c_out, stride=1)]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _torchvision_resnet(
    factory: Callable[..., tv_models.ResNet], small_images: bool, in_channels: int, **kwargs: Any
) -> tv_models.ResNet:
    """A torchvision ResNet without classifier (``fc = Identity``), module names unchanged.

    ``small_images`` swaps the stem for a 3x3 stride-1 convolution without max-pool (the usual CIFAR stem);
    ``in_channels != 3`` swaps the first convolution for one with that many input channels. The state dict
    loads with ``strict=True`` into ``torchvision.models.<name>()`` whose ``fc`` is ``nn.Identity()`` (and
    whose stem is replaced the same way, if it was here).
    """
    kwargs.setdefault("zero_init_residual", True)  # as the official code
    net = factory(**kwargs)
    if small_images or in_channels != 3:
        kernel, stride, padding = (3, 1, 1) if small_images else (7, 2, 3)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=padding, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    if small_images:
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def _timm_model(name: str, small_images: bool, in_channels: int, **kwargs: Any) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            f"backbone 'timm:{name}' needs timm: pip install timm (or pip install 'vicreg[timm]')"
        ) from err
    if small_images:
        raise ValueError(
            "small_images=True only applies to the torchvision ResNets; for a timm model pass its own "
            "options to build_backbone, e.g. build_backbone('timm:vit_small_patch16_224', img_size=32, "
            "patch_size=4)"
        )
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for the available names")
    kwargs.setdefault("pretrained", False)
    return timm.create_model(name, num_classes=0, in_chans=in_channels, **kwargs)


def _small_cnn(small_images: bool, in_channels: int, **kwargs: Any) -> nn.Module:
    del small_images  # always built for small images
    return SmallCNN(in_channels=in_channels, **kwargs)


def _resnet1d(small_images: bool, in_channels: int, **kwargs: Any) -> nn.Module:
    del small_images  # images only
    return ResNet1d(in_channels=in_channels, **kwargs)


def _mlp(small_images: bool, in_channels: int, **kwargs: Any) -> nn.Module:
    del small_images  # images only
    return MLPEncoder(in_channels, **kwargs)  # in_channels: the number of table features


#: Backbone names accepted by :func:`build_backbone` (plus ``"timm:<name>"``) and their feature size.
BACKBONES: dict[str, tuple[Callable[..., nn.Module], int | None]] = {
    "resnet18": (lambda s, c, **kw: _torchvision_resnet(tv_models.resnet18, s, c, **kw), 512),
    "resnet34": (lambda s, c, **kw: _torchvision_resnet(tv_models.resnet34, s, c, **kw), 512),
    "resnet50": (lambda s, c, **kw: _torchvision_resnet(tv_models.resnet50, s, c, **kw), 2048),
    "small_cnn": (_small_cnn, None),  # 8 * width
    "resnet1d": (_resnet1d, None),  # signals (N, C, T): 2 * width
    "mlp": (_mlp, None),  # table rows (N, F), in_channels = F: width
}


def build_backbone(name: str, *, small_images: bool = False, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """A randomly initialised backbone by name; it maps ``(N, in_channels, H, W)`` to ``(N, feature_dim)``.

    Args:
        name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (torchvision, classifier removed),
            ``"small_cnn"`` (:class:`SmallCNN`), ``"timm:<model name>"`` (created with ``num_classes=0``), or for
            non-image inputs ``"resnet1d"`` (:class:`vicreg.encoders.ResNet1d`, signals ``(N, C, T)``) and
            ``"mlp"`` (:class:`vicreg.encoders.MLPEncoder`, table rows ``(N, F)``).
        small_images: ResNets only: 3x3 stride-1 stem without max-pool, for 32-64 px images.
        in_channels: number of input channels (e.g. 1 for Fashion-MNIST; signal channels for ``resnet1d``;
            the number of features for ``mlp``).
        **kwargs: passed to the constructor: torchvision's ``resnetXX`` (``zero_init_residual`` defaults to
            True as in the official code), ``SmallCNN`` (``width``), ``ResNet1d`` (``width``), ``MLPEncoder``
            (``width``, ``depth``) or ``timm.create_model``.
    """
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if name.startswith("timm:"):
        return _timm_model(name.removeprefix("timm:"), small_images, in_channels, **kwargs)
    if name not in BACKBONES:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(
            f"unknown backbone {name!r}; known names: {known}, or 'timm:<name>' with timm installed, "
            "or pass any nn.Module"
        )
    factory, _ = BACKBONES[name]
    return factory(small_images, in_channels, **kwargs)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild a backbone and feed it: stored in checkpoints and exports.

    ``build()`` is ``build_backbone(name, **kwargs)``; ``input_shape`` is one sample's shape without the batch
    dimension (``(C, H, W)`` images, ``(C, T)`` signals, ``(F,)`` table rows) and ``mean``/``std`` the
    per-channel (or per-feature) normalisation the encoder was trained with: images as pixels in ``[0, 1]``
    minus ``mean`` over ``std``, float data as ``(x - mean) / std``. ``kind`` names the data kind
    (``image``, ``signal``, ``table``) that produced it.
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    feature_dim: int = 0
    kind: str = "image"
    input_shape: tuple[int, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def build(self) -> nn.Module:
        """A freshly initialised backbone of this architecture."""
        return build_backbone(self.name, **dict(self.kwargs))

    @property
    def in_channels(self) -> int:
        return int(self.kwargs.get("in_channels", self.input_shape[0] if self.input_shape else 3))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, numbers, strings): safe for ``torch.load(weights_only=True)`` and JSON."""
        d = asdict(self)
        d["kwargs"] = dict(self.kwargs)
        for key in ("input_shape", "mean", "std"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderSpec:
        try:
            return cls(
                name=str(d["name"]),
                kwargs=dict(d.get("kwargs", {})),
                feature_dim=int(d.get("feature_dim", 0)),
                kind=str(d.get("kind", "image")),
                input_shape=tuple(int(v) for v in d.get("input_shape", ())),
                mean=tuple(float(v) for v in d.get("mean", ())),
                std=tuple(float(v) for v in d.get("std", ())),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not an encoder description ({type(err).__name__}: {err}): {dict(d)!r}") from err


@torch.no_grad()
def infer_feature_dim(backbone: nn.Module, sample_input: Tensor) -> int:
    """The feature size of ``backbone`` from one forward pass of ``sample_input`` in eval mode.

    The training/eval mode of every submodule is restored afterwards, and eval mode keeps BatchNorm running
    statistics untouched. The output must be a 2-D ``(N, feature_dim)`` tensor.
    """
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        out = backbone(sample_input)
    except Exception as err:
        raise ValueError(
            f"could not infer the feature size of {type(backbone).__name__} from a forward pass of an input "
            f"of shape {tuple(sample_input.shape)} ({type(err).__name__}: {err}); pass feature_dim= or a "
            "sample_input= the backbone accepts"
        ) from err
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(out, Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the backbone {type(backbone).__name__} must return a 2-D (batch, features) tensor, got "
            f"{shape}; end it with global pooling and nn.Flatten(), or remove its classifier head"
        )
    return int(out.shape[1])


def feature_dim_of(name: str, module: nn.Module) -> int | None:
    """The feature size of backbone ``name`` built as ``module``: the registry's, else what the module reports
    (``feature_dim`` of our encoders, ``num_features`` of timm models); ``None`` when neither tells."""
    dim = BACKBONES[name][1] if name in BACKBONES else None
    dim = dim or getattr(module, "feature_dim", None) or getattr(module, "num_features", None)
    return int(dim) if isinstance(dim, int) else None


def _resolve_backbone(
    backbone: str | nn.Module,
    feature_dim: int | None,
    small_images: bool,
    in_channels: int,
    sample_input: Tensor | None,
) -> tuple[nn.Module, int]:
    if isinstance(backbone, str):
        module = build_backbone(backbone, small_images=small_images, in_channels=in_channels)
        known_dim = feature_dim_of(backbone, module)
        if feature_dim is not None and known_dim is not None and feature_dim != known_dim:
            raise ValueError(f"feature_dim={feature_dim} but backbone {backbone!r} outputs {known_dim} features")
        if known_dim is not None:
            return module, int(known_dim)
    elif isinstance(backbone, nn.Module):
        module = backbone  # used as given: small_images and in_channels apply to names only
    else:
        raise TypeError(f"backbone must be a name or an nn.Module, got {type(backbone).__name__}")
    if feature_dim is not None:
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        return module, feature_dim
    if sample_input is None:
        param = next(iter(module.parameters()), None)
        device = param.device if param is not None else None
        dtype = param.dtype if param is not None and param.is_floating_point() else None
        sample_input = torch.zeros(2, in_channels, 32, 32, device=device, dtype=dtype)
    return module, infer_feature_dim(module, sample_input)


@contextmanager
def frozen_running_stats(*modules: nn.Module) -> Iterator[None]:
    """Inside the block, normalisation layers of ``modules`` in training mode use the batch's statistics but
    update no running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``).

    Done by clearing ``track_running_stats`` of every BatchNorm/InstanceNorm layer (torch's ``_NormBase``:
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, timm's ``BatchNormAct2d``) that tracks them, and restoring it on
    exit; in training mode such a layer then normalises with the batch statistics and passes no buffers to
    ``F.batch_norm``. Layers in eval mode are unaffected (they keep using their running statistics).
    """
    norms = [
        m
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
    ]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


# --------------------------------------------------------------------------------------------- model


class VICReg(nn.Module):
    """Encoder(s) and expander(s) of VICReg; the loss is :func:`vicreg.vicreg_loss`.

    >>> model = VICReg("resnet18", expander="8192-8192-8192", small_images=True)
    >>> z_a, z_b = model(view_a, view_b)        # expander outputs, (N, 8192) each: feed them to the loss
    >>> h = model.embed(x)                       # representation (backbone output), (N, 512)

    Args:
        backbone: a name for :func:`build_backbone` (``"resnet18"``, ``"resnet34"``, ``"resnet50"``,
            ``"small_cnn"``, ``"timm:<name>"``) or any ``nn.Module`` returning ``(N, feature_dim)``.
        expander: layer widths of the expander, ``"8192-8192-8192"`` in the paper.
        small_images: for a ResNet by name, the 3x3 stride-1 stem without max-pool (32-64 px images).
        in_channels: input channels of a backbone built by name (1 for grayscale).
        feature_dim: feature size of an ``nn.Module`` backbone; when omitted it is inferred by one forward
            pass in eval mode of ``sample_input`` (default zeros of shape ``(2, in_channels, 32, 32)``).
        sample_input: an example batch the backbone(s) accept, for that inference (e.g. ``(2, F)`` for a
            tabular MLP).
        backbone_b, expander_b, feature_dim_b: a second encoder and/or expander for the second view (the
            paper trains ResNet-50 against ViT-S). With ``backbone_b`` given, ``expander_b`` defaults to a
            fresh expander of the same spec; with only ``expander_b`` given, the backbone is shared. Both
            expanders must end at the same width.

    Attributes ``backbone`` and ``expander`` (and ``backbone_b``/``expander_b``, ``None`` when shared) are the
    modules; ``feature_dim``/``feature_dim_b`` the representation sizes and ``embedding_dim`` the expander
    output size. ``backbone`` keeps the original module names, so its state dict is the exported encoder.
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        expander: str | Sequence[int] = "8192-8192-8192",
        small_images: bool = False,
        *,
        in_channels: int = 3,
        feature_dim: int | None = None,
        sample_input: Tensor | None = None,
        backbone_b: str | nn.Module | None = None,
        expander_b: str | Sequence[int] | None = None,
        feature_dim_b: int | None = None,
    ) -> None:
        super().__init__()
        if small_images and not isinstance(backbone, str) and not isinstance(backbone_b, str):
            raise ValueError(
                "small_images=True only changes backbones given by name, and none is; build the module with "
                "the stem you want, e.g. build_backbone('resnet18', small_images=True)"
            )
        self.backbone, self.feature_dim = _resolve_backbone(
            backbone, feature_dim, small_images, in_channels, sample_input
        )
        self.expander = Expander(self.feature_dim, expander)
        self.embedding_dim = self.expander.out_features

        self.backbone_b: nn.Module | None = None
        self.expander_b: Expander | None = None
        self.feature_dim_b = self.feature_dim
        if backbone_b is not None:
            self.backbone_b, self.feature_dim_b = _resolve_backbone(
                backbone_b, feature_dim_b, small_images, in_channels, sample_input
            )
        elif feature_dim_b is not None:
            raise ValueError("feature_dim_b is only meaningful with a second backbone (backbone_b=...)")
        if backbone_b is not None or expander_b is not None:
            self.expander_b = Expander(self.feature_dim_b, expander if expander_b is None else expander_b)
            if self.expander_b.out_features != self.embedding_dim:
                raise ValueError(
                    f"the two expanders must end at the same width for the loss, got {self.embedding_dim} "
                    f"(expander={expander!r}) and {self.expander_b.out_features} (expander_b={expander_b!r})"
                )

    @property
    def two_branches(self) -> bool:
        """Whether the second view has its own encoder or expander."""
        return self.expander_b is not None

    def _modules_of(self, branch: str) -> tuple[nn.Module, nn.Module]:
        if branch == "a":
            return self.backbone, self.expander
        if branch == "b":
            backbone = self.backbone if self.backbone_b is None else self.backbone_b
            return backbone, self.expander if self.expander_b is None else self.expander_b
        raise ValueError(f"branch must be 'a' or 'b', got {branch!r}")

    def embed(self, x: Tensor, branch: str = "a") -> Tensor:
        """The representation (backbone output, ``(N, feature_dim)``) used downstream after pretraining."""
        return self._modules_of(branch)[0](x)

    def expand(self, x: Tensor, branch: str = "a") -> Tensor:
        """The expander output ``(N, embedding_dim)`` of one view through one branch."""
        backbone, expander = self._modules_of(branch)
        return expander(backbone(x))

    @overload
    def forward(self, x_a: Tensor, x_b: None = None) -> Tensor: ...
    @overload
    def forward(self, x_a: Tensor, x_b: Tensor) -> tuple[Tensor, Tensor]: ...
    @overload
    def forward(self, x_a: Tensor, x_b: Tensor, local_views: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]: ...

    def forward(
        self, x_a: Tensor, x_b: Tensor | None = None, local_views: Sequence[Tensor] | None = None
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[list[Tensor], list[Tensor]]:
        """``model(x)`` -> expander output of branch a; ``model(x_a, x_b)`` -> ``(z_a, z_b)``;
        ``model(x_a, x_b, local_views=[...])`` -> :meth:`forward_multi` (multi-crop).

        The pair form runs each view through its own branch in separate calls (BatchNorm statistics per
        view, as the official code). Call the pair form in training: under DistributedDataParallel both
        views (and the local views) must go through one ``forward``.
        """
        if local_views is not None:
            if x_b is None:
                raise ValueError("local views come with the two global views: model(x_a, x_b, local_views=...)")
            return self.forward_multi([x_a, x_b], local_views)
        z_a = self.expand(x_a, "a")
        if x_b is None:
            return z_a
        return z_a, self.expand(x_b, "b")

    def forward_multi(
        self, global_views: Sequence[Tensor], local_views: Sequence[Tensor] = ()
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Expander outputs of the two global views and of any number of local views (multi-crop).

        The global views ``[x_a, x_b]`` go exactly as ``model(x_a, x_b)`` (view A through branch a, view B
        through branch b, separate calls: BatchNorm statistics per view), so without local views this is the
        pair form. The local views, all of one shape, run as ONE concatenated batch through branch b (the
        shared encoder when the branches are shared; branch b's own encoder and expander otherwise, which must
        then accept the local crops), as DINO's multi-crop wrapper batches the crops of one resolution; they are
        normalised with that batch's statistics but update no running statistics
        (:func:`frozen_running_stats`), so evaluation uses statistics of the global views only.

        Under DistributedDataParallel only ``forward`` is wrapped: call this through a ``forward`` (a
        ``forward_multi`` call on ``ddp.module`` skips DDP's gradient synchronisation set-up).

        Returns:
            ``([z_a, z_b], [z_local_1, ..., z_local_M])``, each ``(N, embedding_dim)``.
        """
        if len(global_views) != 2:
            raise ValueError(f"forward_multi takes the two global views [x_a, x_b], got {len(global_views)}")
        local_views = list(local_views)
        for i, x in enumerate(local_views):
            if x.shape != local_views[0].shape:
                raise ValueError(
                    f"local view {i} has shape {tuple(x.shape)} but local view 0 has {tuple(local_views[0].shape)}; "
                    "the local views run as one batch and need one shape"
                )
        z_a, z_b = self.expand(global_views[0], "a"), self.expand(global_views[1], "b")
        if not local_views:
            return [z_a, z_b], []
        backbone, expander = self._modules_of("b")
        with frozen_running_stats(backbone, expander):
            z_local = expander(backbone(torch.cat(local_views)))
        return [z_a, z_b], list(z_local.chunk(len(local_views)))
