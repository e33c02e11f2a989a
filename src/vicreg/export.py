"""Export a trained encoder in formats other tools load; each is written only after it passes its check.

Formats (:data:`FORMATS`):

* ``safetensors``: the backbone's state dict (it loads with ``strict=True`` into the architecture, e.g.
  torchvision's ``resnet18()`` with ``fc = Identity``), its :class:`~vicreg.models.EncoderSpec` as JSON in the
  file's metadata (key ``vicreg_encoder``), so ``vicreg.load_backbone`` rebuilds it from the file alone. The
  run's own ``backbone.safetensors`` is this format: both are written by :func:`vicreg.checkpoint.write_backbone`.
* ``pt``: the same state dict through ``torch.save``, plain tensors only (``torch.load(weights_only=True)``
  reads it), the spec in the state dict's ``_metadata``; ``vicreg.load_backbone`` rebuilds it too.
* ``hf``: a folder with ``model.safetensors``, ``config.json`` and a ``README.md`` model card. ``config.json``
  follows timm's layout (``architecture``, ``model_args``, ``num_classes``, ``num_features``,
  ``pretrained_cfg`` with ``input_size``, ``mean`` and ``std``) plus a ``vicreg`` section (the encoder spec,
  the vicreg version, the training summary and eval numbers). For a ``timm:<name>`` backbone timm itself loads
  the folder: ``timm.create_model("local-dir:DIR", pretrained=True)`` or ``timm.create_model(name,
  pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file="DIR/model.safetensors", num_classes=0))``.
* ``onnx``: ``torch.onnx.export`` (the ``torch.export``-based exporter) with a dynamic batch dimension; input
  ``input`` (normalised as in training), output ``features``; the spec is in the model's ``metadata_props``.
  Needs ``pip install 'vicreg[onnx]'``.

Every format is written to a temporary path next to the target and checked there: the state-dict formats are
read back and loaded strictly into a freshly built ``spec.build()``, whose features on a seeded random batch of
``spec.input_shape`` must be identical to the exported backbone's; the ONNX model runs in onnxruntime on batches
of another size than the traced one, within ``1e-4 * max(1, max |feature|)`` of torch. Only then is it renamed to
the target, so a failed export leaves nothing there (and an earlier file or export folder intact).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vicreg.checkpoint import CheckpointError, read_backbone_spec, vicreg_version, write_backbone
from vicreg.files import UMASK, atomic_write
from vicreg.models import EncoderSpec
from vicreg.weights import load_backbone_file, load_strict

__all__ = [
    "FORMATS",
    "ExportCheckError",
    "ExportResult",
    "export_encoder",
    "hf_config",
    "model_card",
    "resolve_format",
]

FORMATS = ("safetensors", "pt", "hf", "onnx")
_SUFFIXES = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".onnx": "onnx"}
_HF_FILES = ("model.safetensors", "config.json", "README.md")
_META_KEY = "vicreg_encoder"  # the key of the spec in the ONNX model's metadata_props, as in backbone files
_CHECK_BATCH = 4  # the batch the checks compare features on (ONNX: traced with 2, run with 5 and 1)
_ONNX_INSTALL = "pip install 'vicreg[onnx]'"


class ExportCheckError(CheckpointError):
    """An export that was written but did not pass its check (it was not renamed to the target)."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_encoder` wrote: the path, the format and one line saying how it was checked."""

    path: Path
    format: str
    check: str


def resolve_format(out: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The export format: ``fmt`` when given, else from the suffix of ``out`` (none, or a folder: ``hf``)."""
    out = Path(out)
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
        if out.suffix in _SUFFIXES and _SUFFIXES[out.suffix] != fmt:
            raise ValueError(
                f"--out {out} has the suffix of a {_SUFFIXES[out.suffix]} file but --format is {fmt}; name the file "
                "for its format or drop --format"
            )
        return fmt
    if out.suffix in _SUFFIXES:
        return _SUFFIXES[out.suffix]
    if not out.suffix or out.is_dir():
        return "hf"
    raise ValueError(
        f"cannot tell the export format of {out} from its suffix {out.suffix!r}: use .safetensors, .pt, .onnx, a "
        "folder (hf), or --format"
    )


# --------------------------------------------------------------------------------------------- export


def export_encoder(
    state_dict: Mapping[str, Tensor],
    spec: EncoderSpec,
    out: str | os.PathLike[str],
    fmt: str | None = None,
    summary: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write the backbone ``state_dict`` of architecture ``spec`` to ``out`` as ``fmt``, checked before renaming.

    Args:
        state_dict: the backbone's weights (loads strictly into ``spec.build()``).
        spec: what rebuilds and feeds the backbone; ``spec.input_shape`` gives the check's random batch.
        out: a file (``.safetensors``, ``.pt``, ``.onnx``) or, for ``hf``, a folder (new, empty, or an earlier
            ``hf`` export, which is replaced).
        fmt: one of :data:`FORMATS`; ``None`` picks it from the suffix of ``out`` (no suffix: ``hf``).
        summary: plain data for ``hf``'s ``config.json`` and model card: training facts (e.g. ``data``,
            ``epochs``, ``steps``, ``train_time``) and the eval numbers under ``eval`` (nested mappings).
    """
    out = Path(out).expanduser()
    fmt = resolve_format(out, fmt)
    if not spec.input_shape:
        raise ValueError(f"the encoder spec of {spec.name} has no input_shape, so its export cannot be checked")
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    reference = spec.build()
    load_strict(reference, state, f"the {spec.name} backbone being exported")
    reference.eval()
    if fmt == "hf":
        return _export_hf(state, spec, reference, out, summary or {})
    if fmt == "onnx":
        return _export_onnx(spec, reference, out)
    check = _StateFileCheck(spec, reference)
    write_backbone(state, spec, out, check=check)
    return ExportResult(out, fmt, check.described)


def _check_batch(spec: EncoderSpec, n: int = _CHECK_BATCH) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, *spec.input_shape, generator=generator)


@torch.no_grad()
def _features(module: nn.Module, x: Tensor) -> Tensor:
    return module.eval()(x)


def _compare(expected: Tensor, got: Tensor, what: str) -> None:
    """Raise :class:`ExportCheckError` unless ``got`` is bitwise ``expected``."""
    if got.shape != expected.shape or not torch.equal(got, expected):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
        raise ExportCheckError(
            f"export check failed: {what} gives other features than the backbone being exported "
            f"(shape {tuple(got.shape)} vs {tuple(expected.shape)}, max abs diff {diff:.3g}); nothing was written"
        )


class _StateFileCheck:
    """The check of a written backbone file (for :func:`write_backbone`); it keeps the line it reports."""

    def __init__(self, spec: EncoderSpec, reference: nn.Module) -> None:
        self.spec, self.reference, self.described = spec, reference, ""

    def __call__(self, tmp: Path) -> None:
        x = _check_batch(self.spec)
        if read_backbone_spec(tmp) != self.spec:
            raise ExportCheckError(
                f"export check failed: the written file does not carry the description of {self.spec.name}; "
                "nothing was written"
            )
        fresh = load_backbone_file(tmp)  # rebuilt from the description the file carries
        _compare(_features(self.reference, x), _features(fresh, x), f"the written file loaded into {self.spec.name}")
        self.described = (
            f"read back, rebuilt from its description and loaded strictly into a new {self.spec.name}: identical "
            f"features on a random batch {tuple(x.shape)}"
        )


def _export_hf(
    state: Mapping[str, Tensor], spec: EncoderSpec, reference: nn.Module, out: Path, summary: Mapping[str, Any]
) -> ExportResult:
    if out.exists() and not _replaceable(out):
        raise ValueError(f"{out} exists and is not an earlier hf export: choose another output folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~UMASK)  # mkdtemp makes it private; the export gets a folder's usual mode
        config = hf_config(spec, summary)
        write_backbone(state, spec, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(spec, summary, out.name))
        x = _check_batch(spec)
        _compare(_features(reference, x), _features(load_backbone_file(tmp), x), "the folder loaded back")
        _install_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    described = f"the folder loaded back rebuilt {spec.name}: identical features on a random batch {tuple(x.shape)}"
    return ExportResult(out, "hf", described)


def _replaceable(out: Path) -> bool:
    """An empty folder, or one holding only an earlier hf export (its config.json has a ``vicreg`` section)."""
    if not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    if not names:
        return True
    if not names <= set(_HF_FILES) or "config.json" not in names:
        return False
    try:
        return "vicreg" in json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _install_folder(tmp: Path, out: Path) -> None:
    """Rename the checked folder ``tmp`` to ``out``; an earlier export there is set aside first, then removed."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", suffix=".tmp", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_onnx(spec: EncoderSpec, reference: nn.Module, out: Path) -> ExportResult:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401 (torch.onnx.export's exporter needs it)
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx, onnxscript and onnxruntime: {_ONNX_INSTALL}") from err
    try:
        program = torch.onnx.export(
            reference,
            (_check_batch(spec, 2),),
            None,
            input_names=["input"],
            output_names=["features"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
    except Exception as err:  # torch.export / onnxscript raise many types; the message is what helps
        raise ExportCheckError(
            f"torch.onnx.export could not export {spec.name} ({type(err).__name__}: "
            f"{(str(err).strip().splitlines() or [''])[0]}); export it as safetensors instead; nothing was written"
        ) from err
    assert program is not None
    proto = program.model_proto
    for key, value in (("vicreg_version", vicreg_version()), (_META_KEY, json.dumps(spec.to_dict()))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    blob = proto.SerializeToString()
    report: list[str] = []

    def check(tmp: Path) -> None:
        onnx.checker.check_model(str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        worst, scale = 0.0, 1.0
        for n in (5, 1):  # other sizes than the traced batch of 2: the batch dimension is dynamic
            x = _check_batch(spec, n)
            expected = _features(reference, x)
            (got,) = session.run(["features"], {"input": x.numpy()})
            if tuple(got.shape) != tuple(expected.shape):
                raise ExportCheckError(
                    f"export check failed: onnxruntime gives features of shape {tuple(got.shape)} for a batch of "
                    f"{n}, torch {tuple(expected.shape)}; nothing was written"
                )
            worst = max(worst, (torch.from_numpy(got) - expected).abs().max().item())
            scale = max(scale, expected.abs().max().item())
        _onnx_close(worst, scale)
        report.append(
            f"onnxruntime vs torch on random batches of 5 and 1 x {tuple(spec.input_shape)}: max abs diff {worst:.2g}"
        )

    atomic_write(out, lambda f: f.write(blob), check=check)
    return ExportResult(out, "onnx", report[0])


def _onnx_close(worst: float, scale: float) -> None:
    """Raise :class:`ExportCheckError` unless onnxruntime's features are within ``1e-4 * max(1, max |f|)``."""
    if not worst <= 1e-4 * scale:
        raise ExportCheckError(
            f"export check failed: onnxruntime and torch differ by up to {worst:.3g} (allowed {1e-4 * scale:.3g}); "
            "nothing was written"
        )


# --------------------------------------------------------------------------------------------- hf folder


def hf_config(spec: EncoderSpec, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of an ``hf`` export: timm's layout (so timm's ``local-dir:`` loads timm backbones)
    plus a ``vicreg`` section with the encoder spec, the vicreg version and the training summary."""
    timm_name = spec.name.removeprefix("timm:") if spec.name.startswith("timm:") else None
    if timm_name is not None:  # timm.create_model's own arguments
        args = {k: v for k, v in spec.kwargs.items() if k not in ("in_channels", "small_images", "pretrained")}
        model_args: dict[str, Any] = {"in_chans": spec.in_channels, **args}
    else:  # vicreg.models.build_backbone's arguments
        model_args = dict(spec.kwargs)
    return {
        "architecture": timm_name or spec.name,
        "model_args": model_args,
        "num_classes": 0,
        "num_features": spec.feature_dim,
        "pretrained_cfg": {
            "input_size": list(spec.input_shape),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "num_classes": 0,
        },
        "vicreg": {
            "version": vicreg_version(),
            "encoder": spec.to_dict(),
            "input": _input_description(spec),
            "summary": _plain(summary or {}),
        },
    }


def _plain(value: Any) -> Any:
    """``value`` as JSON data: mappings, lists, numbers and strings (others as their ``str``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _input_description(spec: EncoderSpec) -> str:
    shape = "x".join(str(s) for s in spec.input_shape)
    if spec.kind == "image":
        scale = "uint8 pixels scaled to [0, 1] (16-bit and float values as they are), minus mean, over std, per channel"
    else:
        scale = "(x - mean) / std per channel" if spec.kind == "signal" else "(x - mean) / std per feature"
    return f"{spec.kind} batches (N, {shape}), {scale}"


def model_card(spec: EncoderSpec, summary: Mapping[str, Any] | None = None, folder: str = "DIR") -> str:
    """The ``README.md`` of an ``hf`` export: what it is, its input, training facts, eval table, how to load it."""
    summary = summary or {}
    timm_name = spec.name.removeprefix("timm:") if spec.name.startswith("timm:") else None
    tags = ["vicreg", "self-supervised-learning", "feature-extraction", spec.kind]
    lines = ["---", f"library_name: {'timm' if timm_name else 'vicreg'}", "tags:"]
    lines += [f"- {t}" for t in tags] + ["---", ""]
    args = ", ".join(f"{k}={v!r}" for k, v in spec.kwargs.items())
    lines += [
        f"# VICReg encoder: `{spec.name}`",
        "",
        f"A `{spec.name}` backbone ({args}) pretrained with VICReg (vicreg {vicreg_version()}). It maps a batch to "
        f"{spec.feature_dim} features (no classifier head).",
        "",
        "## Input",
        "",
        f"- {_input_description(spec)}",
        f"- mean: {list(spec.mean)}",
        f"- std: {list(spec.std)}",
        "",
        "## Training",
        "",
    ]
    facts = _flatten({k: v for k, v in summary.items() if k != "eval"})
    lines += [f"- {k}: {_fmt(v)}" for k, v in facts] or ["- not recorded"]
    lines += ["", "## Evaluation", ""]
    rows = _flatten(summary.get("eval", {})) if isinstance(summary.get("eval"), Mapping) else []
    if rows:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows]
    else:
        lines.append("Not evaluated (run `vicreg eval` before exporting to include its numbers).")
    lines += ["", "## How to load", "", "```python", "import vicreg", ""]
    lines += [
        f'backbone = vicreg.load_backbone("{folder}")  # eval mode, weights loaded strictly',
        "print(backbone.vicreg_normalize, backbone.vicreg_input_shape)",
        "features = backbone(x)  # x normalised as above",
        "```",
    ]
    if timm_name:
        overlay = f'dict(file="{folder}/model.safetensors", num_classes=0)'
        lines += [
            "",
            "With timm alone:",
            "",
            "```python",
            "import timm",
            "",
            f'model = timm.create_model("local-dir:{folder}", pretrained=True)',
            "# or",
            f'model = timm.create_model("{timm_name}", pretrained=True, num_classes=0, in_chans={spec.in_channels},',
            f"                          pretrained_cfg_overlay={overlay})",
            "```",
        ]
    else:
        lines += [
            "",
            "Or with the weights file alone:",
            "",
            "```python",
            "from safetensors.torch import load_file",
            "from vicreg.models import build_backbone",
            "",
            f'backbone = build_backbone("{spec.name}", {args})',
            f'backbone.load_state_dict(load_file("{folder}/model.safetensors"), strict=True)',
            "```",
        ]
    return "\n".join(lines) + "\n"


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        rows = []
        for k, v in value.items():
            rows += _flatten(v, f"{prefix} / {k}" if prefix else str(k))
        return rows
    return [(prefix, value)]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
