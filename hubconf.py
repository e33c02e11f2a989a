"""torch.hub entry points for a local checkout of vicreg.

    import torch
    backbone = torch.hub.load("/path/to/vicreg", "vicreg_backbone", source="local", checkpoint="runs/x")
    features = backbone(images)   # float images normalised as in training: see backbone.vicreg_normalize

``checkpoint`` is a run folder (the --out of ``vicreg train``) or a checkpoint file. The backbone is rebuilt
from the run's config and loaded with ``strict=True``; it is returned in eval mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "yaml", "safetensors"]

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(_SRC))


def vicreg_backbone(checkpoint: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """The trained backbone (encoder) of a vicreg run folder or checkpoint, in eval mode.

    The returned module maps normalised images ``(N, C, S, S)`` to features ``(N, D)``. Its attributes
    ``vicreg_normalize`` (``{"mean": ..., "std": ...}`` per channel, for pixels scaled to [0, 1]) and
    ``vicreg_image_size`` (``S``) say how training fed it.
    """
    from vicreg.build import load_encoder

    enc = load_encoder(checkpoint, device)
    backbone = enc.model.backbone.eval()
    backbone.vicreg_normalize = {"mean": enc.mean, "std": enc.std}
    backbone.vicreg_image_size = enc.image_size
    backbone.vicreg_input_shape = enc.spec.input_shape
    backbone.vicreg_spec = enc.spec
    return backbone


def vicreg_model(checkpoint: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """The whole trained :class:`vicreg.VICReg` model (backbone and expander) of a run, in eval mode."""
    from vicreg.build import load_encoder

    return load_encoder(checkpoint, device).model
