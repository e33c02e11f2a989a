"""Start a backbone from pretrained weights: a state-dict file, torchvision's or timm's own weights.

Sources (the ``--model.init`` of ``vicreg train``):

* a ``.safetensors`` / ``.pt`` / ``.pth`` backbone state dict: ours (``vicreg export``), a torchvision or a timm
  one, a ``{"state_dict": ...}`` training checkpoint, a vicreg checkpoint (its ``backbone.*`` weights) or an
  ``hf`` export folder (its ``model.safetensors``);
* ``torchvision:<WeightsName>`` (e.g. ``torchvision:ResNet50_Weights.IMAGENET1K_V2``): read from the torch hub
  cache, ``torch.hub.get_dir()/checkpoints/<file name of the weights' url>``, downloaded only when asked;
* ``timm``: timm's own pretrained weights for a ``timm:<name>`` backbone, from the Hugging Face cache (offline
  unless downloading is asked for).

Loading is strict. A mismatch raises :class:`ValueError` listing, in a few lines, the counts and the first names
of the missing, unexpected and mis-shaped keys (:func:`mismatch_report`). Classifier heads of ImageNet
checkpoints (``fc.*``, ``head.*``, ``classifier.*`` keys the backbone does not have) are dropped explicitly, and
the description returned says so. RGB weights for a backbone of ``C != 3`` input channels have their first
convolution adapted as timm's ``adapt_input_conv`` does (:func:`adapt_first_conv`), and the description says
so too. A missing ``num_batches_tracked`` BatchNorm counter (absent from old
checkpoints) is filled with the backbone's own, as ``torch.nn.BatchNorm`` does for such checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from vicreg.checkpoint import FORMAT, CheckpointError, read_backbone_spec, read_backbone_state, read_tensor_file
from vicreg.models import EncoderSpec

__all__ = [
    "HEAD_PREFIXES",
    "adapt_first_conv",
    "adapt_input_conv",
    "backbone_from_state",
    "load_backbone_file",
    "load_initial_weights",
    "load_strict",
    "mismatch_report",
    "read_state_dict",
]

#: Key prefixes of the classifier heads of torchvision / timm ImageNet checkpoints (our backbones have none).
HEAD_PREFIXES = ("fc.", "head.", "classifier.")
_SHOWN = 3  # names listed per kind of mismatch


def mismatch_report(model_keys_shapes: Mapping[str, Sequence[int]], state: Mapping[str, Tensor]) -> str:
    """A few lines naming what keeps ``state`` from loading strictly into a model with these keys and shapes.

    One line per kind of mismatch (missing, unexpected, mis-shaped), each with its count and the first three
    names (mis-shaped ones with both shapes); ``""`` when ``state`` fits.
    """
    missing = [k for k in model_keys_shapes if k not in state]
    unexpected = [k for k in state if k not in model_keys_shapes]
    misshaped = [
        f"{k} {_shape(state[k].shape)} vs model {_shape(shape)}"
        for k, shape in model_keys_shapes.items()
        if k in state and tuple(state[k].shape) != tuple(shape)
    ]
    lines = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            more = f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
            lines.append(f"{len(names)} {label}: {', '.join(names[:_SHOWN])}{more}")
    return "\n".join(lines)


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)``, or a :class:`ValueError` with :func:`mismatch_report`."""
    own = module.state_dict()
    state = dict(state)
    for key, value in own.items():  # old checkpoints lack the BatchNorm counter; torch fills it the same way
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    report = mismatch_report({k: tuple(v.shape) for k, v in own.items()}, state)
    if report:
        lines = "\n".join("  " + line for line in report.splitlines())
        raise ValueError(f"the weights of {source} do not fit the backbone {type(module).__name__}:\n{lines}")
    module.load_state_dict(state, strict=True)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a state-dict file (safely: ``weights_only``), unwrapped from the usual containers.

    Accepts a plain state dict, ``{"state_dict": ...}`` (timm / Lightning training checkpoints), a vicreg
    checkpoint (its ``backbone.*`` weights), a folder written by ``vicreg export --format hf``, and strips the
    ``module.`` prefix that ``DistributedDataParallel`` adds to every key.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights file at {path}: give a .safetensors/.pt state dict, torchvision:<WeightsName> or timm"
        )
    state: Any = read_tensor_file(path)
    if state.get("format") == FORMAT:
        model = state.get("model", {})
        state = {k.removeprefix("backbone."): v for k, v in model.items() if k.startswith("backbone.")}
    elif isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (keys: {', '.join(list(state)[:5])})")
    return dict(state)


def backbone_from_state(state: Mapping[str, Tensor], spec: EncoderSpec, source: str) -> nn.Module:
    """``spec.build()`` with ``state`` loaded strictly, in eval mode, carrying how to feed it: the attributes
    ``vicreg_spec`` (the :class:`EncoderSpec`), ``vicreg_input_shape`` (one sample, no batch dimension) and
    ``vicreg_normalize`` (``{"mean": ..., "std": ...}``)."""
    module = spec.build()
    load_strict(module, state, source)
    module.eval()
    vars(module).update(  # plain attributes, as nn.Module.__setattr__ stores non-tensor values
        vicreg_spec=spec,
        vicreg_input_shape=tuple(spec.input_shape),
        vicreg_normalize={"mean": tuple(spec.mean), "std": tuple(spec.std)},
    )
    return module


def load_backbone_file(path: str | os.PathLike[str], spec: EncoderSpec | None = None) -> nn.Module:
    """The backbone of a backbone file (``.safetensors`` / ``.pt`` written by vicreg) or an ``hf`` export
    folder, rebuilt from the description it carries (:func:`backbone_from_state`); ``spec`` rebuilds a file
    without one (a foreign state dict)."""
    path = Path(path).expanduser()
    if path.suffix == ".onnx":
        raise ValueError(f"{path} is an ONNX model: run it with onnxruntime.InferenceSession({str(path)!r})")
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"no backbone at {weights}: give a run folder, a backbone file or an hf export folder")
    state = read_backbone_state(weights)  # first: a file that is no backbone at all says so
    if spec is None:
        spec = read_backbone_spec(weights)
    if spec is None:
        raise CheckpointError(
            f"{weights} does not say which architecture it holds (it was not written by vicreg, or before backbone "
            "files carried their description): pass spec=EncoderSpec(...), or load its run folder"
        )
    return backbone_from_state(state, spec, str(weights))


def _drop_heads(state: Mapping[str, Tensor], model_keys: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    dropped = [k for k in state if k.startswith(HEAD_PREFIXES) and k not in model_keys]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """A first-convolution weight ``(O, 3, k, k)`` of RGB weights for ``in_channels`` input channels.

    As timm's ``adapt_input_conv`` (timm/models/_manipulate.py): one channel gets the sum of the RGB filters;
    ``C != 3`` channels get the RGB filters repeated (R, G, B, R, G, B, ...) and scaled by ``3 / C``, so an
    input with the same value on every channel gives the same response as the RGB weights did on grey.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"adapt_input_conv needs RGB convolution weights (O, 3, kh, kw), got {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    w = weight.float()
    if in_channels == 1:
        w = w.sum(dim=1, keepdim=True)
    elif in_channels != 3:
        w = w.repeat(1, -(-in_channels // 3), 1, 1)[:, :in_channels] * (3 / in_channels)
    return w.to(weight.dtype)


def adapt_first_conv(state: Mapping[str, Tensor], model_state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """``state`` with its one RGB stem convolution adapted to the model's input channels, and a note saying so.

    The stem is the one 4-D weight that differs from the model's only in its input channels, 3 in ``state``;
    the note is ``""`` when nothing was adapted (the shapes fit, or no such weight, or more than one).
    """
    candidates = [
        k
        for k, v in state.items()
        if k in model_state
        and v.ndim == 4
        and v.shape[1] == 3
        and model_state[k].ndim == 4
        and model_state[k].shape[1] != 3
        and (v.shape[0], *v.shape[2:]) == (model_state[k].shape[0], *model_state[k].shape[2:])
    ]
    if len(candidates) != 1:
        return dict(state), ""
    key = candidates[0]
    c = int(model_state[key].shape[1])
    out = dict(state)
    out[key] = adapt_input_conv(state[key], c)
    how = "summed" if c == 1 else f"repeated and scaled by 3/{c}"
    return out, f"adapted the first convolution ({key}) from 3 to {c} channels (RGB filters {how}, as timm does)"


def _apply(backbone: nn.Module, state: Mapping[str, Tensor], source: str) -> str:
    own = backbone.state_dict()
    kept, dropped = _drop_heads(state, own)
    kept, adapted = adapt_first_conv(kept, own)
    load_strict(backbone, kept, source)
    note = f"; dropped the classifier head ({', '.join(dropped)})" if dropped else ""
    note += f"; {adapted}" if adapted else ""
    return f"{source}, {len(kept)} tensors{note}"


def load_initial_weights(
    backbone: nn.Module,
    source: str,
    *,
    backbone_name: str,
    backbone_kwargs: Mapping[str, Any] | None = None,
    download: bool = False,
) -> str:
    """Load pretrained weights into ``backbone`` in place, strictly; returns one line saying where they came from.

    Args:
        backbone: the freshly built backbone (``EncoderSpec.build()``).
        source: a state-dict file or ``hf`` export folder, ``torchvision:<WeightsName>``, or ``timm``.
        backbone_name: the backbone's name (``EncoderSpec.name``): ``timm`` needs a ``timm:<name>`` backbone;
            torchvision weights must be those of this architecture.
        backbone_kwargs: the backbone's ``build_backbone`` arguments (``EncoderSpec.kwargs``): ``timm`` creates
            its pretrained model with the same ones (``in_channels`` becomes timm's ``in_chans``, whose stem
            timm adapts from the 3-channel weights).
        download: fetch torchvision / timm weights that are not in the local cache (else FileNotFoundError).
    """
    if source == "timm":
        return _from_timm(backbone, backbone_name, backbone_kwargs or {}, download)
    if source.startswith("torchvision:"):
        return _from_torchvision(backbone, source.removeprefix("torchvision:"), backbone_name, download)
    path = Path(source).expanduser()
    state = read_state_dict(path)
    return _apply(backbone, state, str(path))


def _from_torchvision(backbone: nn.Module, name: str, backbone_name: str, download: bool) -> str:
    try:
        weights = torchvision.models.get_weight(name)
    except (KeyError, ValueError, AttributeError) as err:
        raise ValueError(
            f"unknown torchvision weights {name!r}: give an enum member such as ResNet50_Weights.IMAGENET1K_V2 "
            "(torchvision.models.get_model_weights('resnet50') lists them)"
        ) from err
    if backbone_name in torchvision.models.list_models():
        own = torchvision.models.get_model_weights(backbone_name)
        if type(weights) is not own:
            raise ValueError(
                f"{name} are weights of another architecture than the backbone {backbone_name!r}: "
                f"use {own.__name__}.<member> ({', '.join(m.name for m in own)})"
            )
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if path.is_file():
        state = read_state_dict(path)
    elif download:
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", check_hash=True, weights_only=True)
    else:
        raise FileNotFoundError(
            f"torchvision weights {name} are not in the torch hub cache ({path}); add --download to fetch them "
            f"from {weights.url}, or copy the file there"
        )
    return _apply(backbone, state, f"torchvision {weights} ({path})")


@contextlib.contextmanager
def _hf_offline(offline: bool) -> Iterator[None]:
    """Hugging Face hub offline mode for the duration (``HF_HUB_OFFLINE=1``: only its local cache is read).

    huggingface_hub reads the variable when it is imported, so its module constant is set too.
    """
    if not offline:
        yield
        return
    import huggingface_hub.constants as hf_constants

    saved_env, saved_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _from_timm(backbone: nn.Module, backbone_name: str, kwargs: Mapping[str, Any], download: bool) -> str:
    if not backbone_name.startswith("timm:"):
        raise ValueError(
            f"init 'timm' loads timm's pretrained weights for a timm:<name> backbone, not {backbone_name!r}; for "
            "a torchvision ResNet use torchvision:<WeightsName>, e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2"
        )
    try:
        import timm
    except ImportError as err:
        raise ImportError("init 'timm' needs timm: pip install timm (or pip install 'vicreg[timm]')") from err
    name = backbone_name.removeprefix("timm:")
    args = {k: v for k, v in kwargs.items() if k not in ("in_channels", "small_images", "pretrained")}
    in_chans = int(kwargs.get("in_channels", 3))
    with _hf_offline(not download):
        try:
            pretrained = timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans, **args)
        except OSError as err:  # huggingface_hub's LocalEntryNotFoundError is a FileNotFoundError
            if download:
                raise
            raise FileNotFoundError(
                f"timm's pretrained weights for {name} are not in the Hugging Face cache; add --download to "
                f"fetch them ({type(err).__name__})"
            ) from err
        except RuntimeError as err:
            if "no pretrained weights" in str(err).lower():
                raise ValueError(f"timm has no pretrained weights for {name}: pick another model or init") from err
            raise
    cfg = getattr(pretrained, "pretrained_cfg", {}) or {}
    where = _timm_weights_location(cfg)
    adapted = f", timm adapted the first convolution from 3 to {in_chans} channels" if in_chans != 3 else ""
    source = f"timm {name} pretrained weights ({where}; timm drops the head{adapted})"
    return _apply(backbone, pretrained.state_dict(), source)


def _timm_weights_location(cfg: Mapping[str, Any]) -> str:
    """Where timm read its weights: the Hugging Face repo and cached file, or the url."""
    repo = cfg.get("hf_hub_id")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
            if filename:
                cached = try_to_load_from_cache(repo, filename)
                if isinstance(cached, str):
                    return f"{repo}: {cached}"
        return str(repo)
    return str(cfg.get("url") or cfg.get("file") or "timm")
