"""vicreg export: every format round-trips (features equal), is checked before it lands, and loads in other tools."""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import vicreg
import vicreg.export as export_module
from vicreg.backbone import load_backbone
from vicreg.checkpoint import CheckpointError
from vicreg.export import (
    FORMATS,
    ExportCheckError,
    export_encoder,
    hf_config,
    model_card,
    resolve_format,
)
from vicreg.models import EncoderSpec

SPECS = {
    "image": EncoderSpec("small_cnn", {"in_channels": 3, "width": 4}, 32, "image", (3, 16, 16), (0.5,) * 3, (0.2,) * 3),
    "table": EncoderSpec("mlp", {"in_channels": 7, "width": 16, "depth": 2}, 16, "table", (7,), (0.1,) * 7, (2.0,) * 7),
    "signal": EncoderSpec("resnet1d", {"in_channels": 2, "width": 8}, 16, "signal", (2, 40), (0.0, 1.0), (1.0, 3.0)),
    "timm": EncoderSpec("timm:test_resnet", {"in_channels": 3}, 96, "image", (3, 32, 32), (0.4,) * 3, (0.2,) * 3),
}
FILE_NAMES = {"safetensors": "enc.safetensors", "pt": "enc.pt", "hf": "enc", "onnx": "enc.onnx"}
SUMMARY = {
    "data": "cifar10",
    "epochs": 12,
    "train_time": "0:41:07",
    "eval": {"knn": {"k20": {"top1": 61.25}}, "linear": {"top1": 66.5}},
}


def spec_of(kind: str) -> EncoderSpec:
    if kind == "timm":
        pytest.importorskip("timm")
    return SPECS[kind]


def trained(spec: EncoderSpec) -> nn.Module:
    """A backbone whose every weight and BatchNorm statistic differs from a fresh build (as after training)."""
    net = spec.build()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=gen) * 0.1
                t.copy_(t.abs() + 0.5 + noise if name.endswith("running_var") else t + noise)
    return net.eval()


def batch(spec: EncoderSpec, n: int = 3) -> Tensor:
    return torch.randn(n, *spec.input_shape, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def features(net: nn.Module, x: Tensor) -> Tensor:
    return net.eval()(x)


def no_leftovers(folder: Path, *keep: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "hf"])
@pytest.mark.parametrize("kind", ["image", "table", "signal", "timm"])
def test_state_formats_round_trip(tmp_path: Path, kind: str, fmt: str) -> None:
    spec = spec_of(kind)
    net = trained(spec)
    result = export_encoder(net.state_dict(), spec, tmp_path / FILE_NAMES[fmt], summary=SUMMARY)
    assert result.path == tmp_path / FILE_NAMES[fmt] and result.format == fmt
    assert "identical features" in result.check
    loaded = load_backbone(result.path)  # every format carries its description
    x = batch(spec)
    assert torch.equal(features(loaded, x), features(net, x))
    assert not loaded.training
    assert loaded.vicreg_spec == spec
    assert loaded.vicreg_input_shape == spec.input_shape
    assert loaded.vicreg_normalize == {"mean": spec.mean, "std": spec.std}
    no_leftovers(tmp_path, FILE_NAMES[fmt])


def test_pt_and_safetensors_are_plain_state_dicts(tmp_path: Path) -> None:
    """Other tools read them without vicreg: torch.load(weights_only=True) and safetensors' load_file."""
    spec = SPECS["image"]
    net = trained(spec)
    for fmt in ("pt", "safetensors"):
        path = export_encoder(net.state_dict(), spec, tmp_path / FILE_NAMES[fmt]).path
        state = load_file(path) if fmt == "safetensors" else torch.load(path, weights_only=True)
        fresh = spec.build()
        fresh.load_state_dict(state, strict=True)
        assert torch.equal(features(fresh, batch(spec)), features(net, batch(spec)))


def test_pt_carries_its_description_in_the_state_dict_metadata(tmp_path: Path) -> None:
    """torch.load gives a plain state dict; the spec rides in its ``_metadata``, which load_state_dict ignores."""
    spec = SPECS["table"]
    path = export_encoder(trained(spec).state_dict(), spec, tmp_path / "enc.pt").path
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, Tensor) for v in state.values())
    assert json.loads(state._metadata[""]["vicreg_encoder"]) == spec.to_dict()
    assert load_backbone(path).vicreg_spec == spec


def test_hf_folder_contents(tmp_path: Path) -> None:
    spec = SPECS["signal"]
    out = export_encoder(trained(spec).state_dict(), spec, tmp_path / "enc", summary=SUMMARY).path
    no_leftovers(out, "model.safetensors", "config.json", "README.md")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet1d" and config["model_args"] == {"in_channels": 2, "width": 8}
    assert config["num_features"] == 16 and config["pretrained_cfg"]["input_size"] == [2, 40]
    assert config["pretrained_cfg"]["mean"] == [0.0, 1.0] and config["pretrained_cfg"]["std"] == [1.0, 3.0]
    assert config["vicreg"]["version"] == vicreg.__version__
    assert EncoderSpec.from_dict(config["vicreg"]["encoder"]) == spec
    assert config["vicreg"]["summary"] == SUMMARY
    card = (out / "README.md").read_text()
    for text in ("cifar10", "epochs: 12", "0:41:07", "| knn / k20 / top1 | 61.25 |", "| linear / top1 | 66.5 |"):
        assert text in card
    assert 'vicreg.load_backbone("enc")' in card and "(N, 2x40)" in card


def test_model_card_without_summary() -> None:
    card = model_card(SPECS["table"], None)
    assert "- not recorded" in card and "Not evaluated" in card and "library_name: vicreg" in card


def test_hf_config_for_timm_uses_timm_arguments() -> None:
    spec = EncoderSpec("timm:resnet18", {"in_channels": 1, "drop_rate": 0.1}, 512, "image", (1, 28, 28), (0.5,), (0.2,))
    config = hf_config(spec)
    assert config["architecture"] == "resnet18"
    assert config["model_args"] == {"in_chans": 1, "drop_rate": 0.1}
    assert config["num_classes"] == 0 and config["pretrained_cfg"]["input_size"] == [1, 28, 28]


def test_timm_loads_the_hf_folder(tmp_path: Path) -> None:
    """timm's own local-file mechanisms rebuild the exported timm backbone, strictly, with equal features."""
    timm = pytest.importorskip("timm")
    spec = SPECS["timm"]
    net = trained(spec)
    out = export_encoder(net.state_dict(), spec, tmp_path / "enc", summary=SUMMARY).path
    x = batch(spec)
    overlay = dict(file=str(out / "model.safetensors"), num_classes=0)  # num_classes=0 keeps timm's load strict
    by_file = timm.create_model("test_resnet", pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    by_dir = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert torch.equal(features(by_file, x), features(net, x))
    assert torch.equal(features(by_dir, x), features(net, x))
    assert by_dir.pretrained_cfg["mean"] == list(spec.mean) and by_dir.num_classes == 0


def test_hf_replaces_an_earlier_export_but_not_a_foreign_folder(tmp_path: Path) -> None:
    spec = SPECS["table"]
    first, second = trained(spec), spec.build().eval()
    out = tmp_path / "enc"
    export_encoder(first.state_dict(), spec, out)
    export_encoder(second.state_dict(), spec, out)
    assert torch.equal(features(load_backbone(out), batch(spec)), features(second, batch(spec)))
    no_leftovers(tmp_path, "enc")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an earlier hf export"):
        export_encoder(first.state_dict(), spec, foreign, fmt="hf")
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]


@pytest.mark.parametrize("fmt", [*FORMATS[:3], pytest.param("onnx", marks=pytest.mark.slow)])
def test_a_failed_check_leaves_nothing_at_the_target(tmp_path: Path, fmt: str, monkeypatch) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    spec = SPECS["table"]

    def failing(*args: object, **kwargs: object) -> None:
        raise ExportCheckError("export check failed: injected")

    monkeypatch.setattr(export_module, "_compare", failing)
    monkeypatch.setattr(export_module, "_onnx_close", failing)
    with pytest.raises(ExportCheckError, match="injected"):
        export_encoder(trained(spec).state_dict(), spec, tmp_path / FILE_NAMES[fmt], fmt=fmt)
    no_leftovers(tmp_path)


def test_a_failed_check_keeps_the_earlier_export(tmp_path: Path, monkeypatch) -> None:
    spec = SPECS["table"]
    net = trained(spec)
    for name in ("enc.safetensors", "enc"):
        export_encoder(net.state_dict(), spec, tmp_path / name)
    before = {p: p.read_bytes() for p in [tmp_path / "enc.safetensors", *sorted((tmp_path / "enc").iterdir())]}

    def failing(*args: object) -> None:
        raise ExportCheckError("export check failed: injected")

    monkeypatch.setattr(export_module, "_compare", failing)
    for name in ("enc.safetensors", "enc"):
        with pytest.raises(ExportCheckError):
            export_encoder(spec.build().state_dict(), spec, tmp_path / name, summary={"data": "other"})
    assert {p: p.read_bytes() for p in before} == before
    no_leftovers(tmp_path, "enc.safetensors", "enc")


def test_the_real_check_catches_a_wrong_file(tmp_path: Path, monkeypatch) -> None:
    """The check reads the written file back: a writer that corrupts a weight is caught, nothing lands."""
    spec = SPECS["image"]
    net = trained(spec)
    real_save = torch.save

    def corrupting_save(obj: Any, f: object) -> None:
        corrupted: Any = OrderedDict((k, v + 1 if k.endswith("running_mean") else v) for k, v in obj.items())
        corrupted._metadata = obj._metadata  # the description survives, a weight does not
        real_save(corrupted, f)

    def forgetting_save(obj: Any, f: object) -> None:
        real_save(dict(obj), f)  # the weights survive, the description does not

    monkeypatch.setattr(torch, "save", corrupting_save)
    with pytest.raises(ExportCheckError, match="other features"):
        export_encoder(net.state_dict(), spec, tmp_path / "enc.pt")
    monkeypatch.setattr(torch, "save", forgetting_save)
    with pytest.raises(ExportCheckError, match="does not carry the description"):
        export_encoder(net.state_dict(), spec, tmp_path / "enc.pt")
    no_leftovers(tmp_path)


def test_a_state_dict_that_does_not_fit_the_spec(tmp_path: Path) -> None:
    spec = SPECS["image"]
    state = trained(spec).state_dict()
    state.pop("features.0.0.weight")
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match="do not fit") as info:
        export_encoder(state, spec, tmp_path / "enc.safetensors")
    assert "1 missing: features.0.0.weight" in str(info.value) and "1 unexpected: extra.weight" in str(info.value)
    no_leftovers(tmp_path)


def test_format_from_the_suffix(tmp_path: Path) -> None:
    assert resolve_format(tmp_path / "a.safetensors") == "safetensors"
    assert resolve_format(tmp_path / "a.pth") == "pt"
    assert resolve_format(tmp_path / "a.onnx") == "onnx"
    assert resolve_format(tmp_path / "folder") == "hf"
    assert resolve_format(tmp_path / "a.bin", "pt") == "pt"
    with pytest.raises(ValueError, match=r"use \.safetensors, \.pt, \.onnx"):
        resolve_format(tmp_path / "a.bin")
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        resolve_format(tmp_path / "a", "tflite")


def test_load_backbone_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no backbone at"):
        load_backbone(tmp_path / "missing")
    with pytest.raises(ValueError, match="onnxruntime"):
        load_backbone(tmp_path / "model.onnx")
    plain = tmp_path / "plain.safetensors"
    save_file(trained(SPECS["table"]).state_dict(), plain)  # a foreign state dict: no description
    with pytest.raises(CheckpointError, match="pass spec="):
        load_backbone(plain)
    assert isinstance(load_backbone(plain, spec=SPECS["table"]), nn.Module)


def test_public_api() -> None:
    assert vicreg.load_backbone is load_backbone and vicreg.export_encoder is export_encoder


# --------------------------------------------------------------------------------------------- onnx


def onnx_round_trip(tmp_path: Path, kind: str) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    spec = spec_of(kind)
    net = trained(spec)
    result = export_encoder(net.state_dict(), spec, tmp_path / "enc.onnx")
    assert result.format == "onnx" and "max abs diff" in result.check
    diff = float(result.check.rsplit(" ", 1)[1])
    assert 0 <= diff < 1e-5  # measured: 3e-8 (mlp) to 3e-7 (timm test_resnet)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert EncoderSpec.from_dict(json.loads(meta["vicreg_encoder"])) == spec
    for n in (1, 7):  # the batch dimension is dynamic
        x = batch(spec, n)
        (got,) = session.run(["features"], {"input": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), features(net, x), rtol=1e-5, atol=1e-5)
    no_leftovers(tmp_path, "enc.onnx")


def test_onnx_round_trip_table(tmp_path: Path) -> None:
    onnx_round_trip(tmp_path, "table")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "signal", "timm"])
def test_onnx_round_trip(tmp_path: Path, kind: str) -> None:
    onnx_round_trip(tmp_path, kind)


def test_onnx_missing_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    spec = SPECS["table"]
    with pytest.raises(ImportError, match=r"pip install 'vicreg\[onnx\]'"):
        export_encoder(trained(spec).state_dict(), spec, tmp_path / "enc.onnx")
    no_leftovers(tmp_path)


def test_onnx_exporter_failure_is_one_line(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    def unsupported(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Unsupported: aten::weird_op\nlong traceback text")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    spec = SPECS["table"]
    with pytest.raises(ExportCheckError, match=r"could not export mlp .*aten::weird_op\); export it as") as info:
        export_encoder(trained(spec).state_dict(), spec, tmp_path / "enc.onnx")
    assert len(str(info.value).splitlines()) == 1
    no_leftovers(tmp_path)


def test_a_format_that_contradicts_the_suffix_is_refused() -> None:
    from vicreg.export import resolve_format

    with pytest.raises(ValueError, match="suffix of a safetensors file but --format is onnx"):
        resolve_format("x.safetensors", "onnx")
    assert resolve_format("x.onnx", "onnx") == "onnx" and resolve_format("folder", "hf") == "hf"
