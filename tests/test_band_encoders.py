"""Encoders for C-band input: ``in_channels`` on every image backbone, and RGB weights adapted to C channels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vicreg.models import EncoderSpec, build_backbone
from vicreg.weights import adapt_first_conv, adapt_input_conv, load_initial_weights

BACKBONES = [("small_cnn", {"width": 4}), ("resnet18", {"small_images": True}), ("resnet18", {})]


@pytest.mark.parametrize("channels", [1, 4, 13])
@pytest.mark.parametrize(("name", "kwargs"), BACKBONES)
def test_image_backbones_take_any_number_of_bands(name: str, kwargs: dict[str, object], channels: int) -> None:
    spec = EncoderSpec(name, {**kwargs, "in_channels": channels}, input_shape=(channels, 32, 32))
    net = spec.build().eval()
    assert spec.in_channels == channels
    with torch.no_grad():
        out = net(torch.randn(2, channels, 32, 32))
    assert out.ndim == 2 and out.shape[0] == 2 and bool(torch.isfinite(out).all())


def test_timm_backbone_takes_any_number_of_bands() -> None:
    pytest.importorskip("timm")
    net = build_backbone("timm:resnet10t", in_channels=13).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 13, 32, 32)).ndim == 2


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 6, 13])
def test_adapt_input_conv_matches_timm(channels: int) -> None:
    timm_manipulate = pytest.importorskip("timm.models._manipulate")
    w = torch.randn(8, 3, 7, 7)
    assert torch.equal(adapt_input_conv(w, channels), timm_manipulate.adapt_input_conv(channels, w.clone()))


def test_adapt_input_conv_keeps_the_response_to_grey_input() -> None:
    """Repeat-and-scale: the same value on all C bands (C a multiple of 3) responds as RGB grey did."""
    w = torch.randn(8, 3, 3, 3)
    grey = torch.rand(2, 1, 9, 9)
    rgb = torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), w)
    for c in (1, 6, 12):
        got = torch.nn.functional.conv2d(grey.expand(-1, c, -1, -1), adapt_input_conv(w, c))
        assert torch.allclose(got, rgb, atol=1e-5)
    with pytest.raises(ValueError, match="RGB convolution weights"):
        adapt_input_conv(torch.randn(8, 4, 3, 3), 13)


def test_init_from_rgb_weights_adapts_the_first_convolution_and_says_so(tmp_path: Path) -> None:
    rgb = build_backbone("resnet18")
    state = {k: v.contiguous() for k, v in rgb.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)  # an ImageNet head
    save_file(state, tmp_path / "rgb.safetensors")
    net = build_backbone("resnet18", in_channels=13)
    note = load_initial_weights(net, str(tmp_path / "rgb.safetensors"), backbone_name="resnet18")
    assert "adapted the first convolution (conv1.weight) from 3 to 13 channels" in note
    assert "dropped the classifier head" in note and "\n" not in note
    assert torch.equal(net.conv1.weight, adapt_input_conv(state["conv1.weight"], 13))
    assert torch.equal(net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    same = build_backbone("resnet18")  # 3 channels: nothing adapted, nothing said
    assert "adapted" not in load_initial_weights(same, str(tmp_path / "rgb.safetensors"), backbone_name="resnet18")


def test_adapt_first_conv_leaves_other_mismatches_to_the_strict_loader() -> None:
    model = {"conv1.weight": torch.zeros(64, 13, 3, 3)}
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7)}  # another stem: not adapted, the strict load reports it
    out, note = adapt_first_conv(state, model)
    assert note == "" and out["conv1.weight"].shape == (64, 3, 7, 7)
