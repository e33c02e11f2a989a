"""``vicreg.load_backbone``: the trained encoder of a run folder, a backbone file or an export, as a module.

Every backbone file vicreg writes (the run's ``backbone.safetensors``, ``vicreg export`` as safetensors, pt or an
``hf`` folder) carries its encoder description, and :func:`vicreg.weights.load_backbone_file` rebuilds it from the
file alone. This module adds what needs the build layer: a run folder without such a file (written before
backbone files carried their description, or a run that has not finished) and a training checkpoint, both rebuilt
from the checkpoint's config and encoder description (:func:`vicreg.build.load_encoder`).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from vicreg.build import load_encoder
from vicreg.checkpoint import FORMAT, read_backbone_spec, read_tensor_file
from vicreg.models import EncoderSpec
from vicreg.weights import backbone_from_state, load_backbone_file

__all__ = ["load_backbone"]

_RUN_FILES = ("backbone.safetensors", "backbone_b.safetensors")  # branch A, branch B


def load_backbone(path: str | os.PathLike[str], spec: EncoderSpec | None = None) -> nn.Module:
    """The trained backbone (encoder) at ``path``, on the CPU, in eval mode, its weights loaded strictly.

    ``path`` is a run folder (the ``--out`` of ``vicreg train``: its ``backbone.safetensors``, or for a run that
    wrote none or an old one without its description, the newest intact checkpoint), a training checkpoint
    file, a backbone file written by vicreg (``RUN/backbone.safetensors``, ``vicreg export`` as ``.safetensors``
    or ``.pt``) or an ``hf`` export folder. ``spec`` rebuilds a state-dict file that does not say what it holds.
    The module's attributes say how to feed it: ``vicreg_spec`` (the :class:`~vicreg.models.EncoderSpec`),
    ``vicreg_input_shape`` (one sample, no batch dimension) and ``vicreg_normalize`` (``{"mean": ..., "std": ...}``).

        backbone = vicreg.load_backbone("runs/x")
        features = backbone(x)  # x normalised with backbone.vicreg_normalize
    """
    path = Path(path).expanduser()
    if path.is_dir() and not (path / "model.safetensors").is_file():  # a run folder, not an hf export
        own = path / _RUN_FILES[0]
        if own.is_file() and read_backbone_spec(own) is not None:
            return load_backbone_file(own)
        return _from_run(path, own if own.is_file() else None)
    if spec is None and path.is_file() and path.suffix != ".onnx" and read_backbone_spec(path) is None:
        if path.suffix in (".pt", ".pth") and read_tensor_file(path).get("format") == FORMAT:
            return _from_run(path, None)  # a training checkpoint
        if path.name in _RUN_FILES and (path.parent / "checkpoints").is_dir():  # an old run's own backbone file
            return _from_run(path.parent, path, branch_b=path.name == _RUN_FILES[1])
    return load_backbone_file(path, spec)


def _from_run(run_or_checkpoint: Path, weights: Path | None, branch_b: bool = False) -> nn.Module:
    """The legacy path: the encoder description from the run's checkpoint (rebuilt from its config when the
    checkpoint is older than stored descriptions); the weights from ``weights`` when given, else from it."""
    enc = load_encoder(run_or_checkpoint)
    spec = enc.spec_b if branch_b else enc.spec
    if spec is None:
        raise ValueError(f"{weights} belongs to a second encoder, but {enc.checkpoint} describes only one")
    if weights is not None:
        return load_backbone_file(weights, spec)
    return backbone_from_state(enc.model.backbone.state_dict(), spec, str(enc.checkpoint))
