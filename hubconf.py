"""torch.hub entry points for a local checkout of vicreg.

    import torch
    backbone = torch.hub.load("/path/to/vicreg", "vicreg_backbone", source="local", checkpoint="runs/x")
    features = backbone(images)   # float images normalised as in training: see backbone.vicreg_normalize

``checkpoint`` is a run folder (the --out of ``vicreg train``), a checkpoint file or a backbone file (what
``vicreg.load_backbone`` takes). The backbone is rebuilt from the encoder description stored with it and loaded
with ``strict=True``; it is returned in eval mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "yaml", "safetensors"]

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(_SRC))


def vicreg_backbone(checkpoint: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """The trained backbone (encoder) of a vicreg run folder, checkpoint or backbone file, in eval mode:
    ``vicreg.load_backbone(checkpoint)`` on ``device``.

    The returned module maps normalised inputs (images ``(N, C, S, S)``) to features ``(N, D)``. Its attributes
    ``vicreg_normalize`` (``{"mean": ..., "std": ...}`` per channel, for pixels scaled to [0, 1]),
    ``vicreg_input_shape``, ``vicreg_spec`` and, for images, ``vicreg_image_size`` (``S``) say how training fed it.
    """
    from vicreg import load_backbone

    backbone = load_backbone(checkpoint).to(device)
    shape = backbone.vicreg_input_shape
    backbone.vicreg_image_size = shape[-1] if backbone.vicreg_spec.kind == "image" and len(shape) == 3 else 0
    return backbone


def vicreg_model(checkpoint: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """The whole trained :class:`vicreg.VICReg` model (backbone and expander) of a run, in eval mode."""
    from vicreg.build import load_encoder

    return load_encoder(checkpoint, device).model
