"""MobileNetV2 `mobilenet_taps="expanded"`: res3/res4 read the next block's 192/576-channel
expansion; same network, same ImageNet weights, and it survives FLOPs counting, model.pt and ONNX."""

from __future__ import annotations

import pytest
import torch

from personsearch.config import Config, DataConfig
from personsearch.errors import ConfigError
from personsearch.models.backbones import build_backbone
from personsearch.models.flops import count_multiply_adds
from personsearch.models.reid import ReidConfig, ReidModel
from personsearch.models.saving import load_reid_model, save_reid_model

SIZE = (64, 32)
EXPANDED = {"res2": 24, "res3": 192, "res4": 576, "res5": 1280}
DIM = 16


def model(taps: str, **overrides) -> ReidModel:
    torch.manual_seed(0)
    settings = {
        "num_classes": 5,
        "backbone": "mobilenet_v2",
        "pretrained": False,
        "feature_dim": DIM,
        "mobilenet_taps": taps,
    }
    return ReidModel(ReidConfig(**(settings | overrides)))


def test_expanded_taps_are_wide_post_activation_maps_at_the_same_strides() -> None:
    backbone = build_backbone("mobilenet_v2", mobilenet_taps="expanded").eval()
    assert backbone.stage_channels == EXPANDED
    with torch.no_grad():
        stages = backbone(torch.randn(2, 3, *SIZE))
    for name, output in stages.items():
        stride = backbone.stage_strides[name]
        assert output.shape == (2, EXPANDED[name], SIZE[0] // stride, SIZE[1] // stride)
    # after ReLU6, unlike the linear bottlenecks
    assert stages["res3"].min() >= 0 and stages["res4"].max() <= 6


def test_expanded_taps_only_move_the_cut_the_network_is_the_same() -> None:
    """The ImageNet weights load into both; res2 and res5 outputs are identical, and the
    expanded res3 is the first layer of the bottleneck network's res4 applied to its res3."""
    narrow = build_backbone(
        "mobilenet_v2", True, mobilenet_taps="bottleneck", missing_weights="raise"
    )
    wide = build_backbone("mobilenet_v2", True, mobilenet_taps="expanded", missing_weights="raise")
    assert wide.weights_source == narrow.weights_source != "random"
    assert sum(p.numel() for p in wide.parameters()) == sum(p.numel() for p in narrow.parameters())
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        a, b = narrow.eval()(images), wide.eval()(images)
        torch.testing.assert_close(a["res2"], b["res2"], rtol=0, atol=0)
        torch.testing.assert_close(a["res5"], b["res5"], rtol=0, atol=0)
        expansion = narrow.res4[0].conv[0]
        torch.testing.assert_close(expansion(a["res3"]), b["res3"], rtol=0, atol=0)


@pytest.mark.parametrize("head", ["clsa", "fpn"])
def test_reid_heads_train_and_embed_on_expanded_taps(head: str) -> None:
    net = model("expanded", head=head)
    levels = net.level_names
    first = net.head.embeddings if head == "clsa" else net.head.lateral
    channels = {name: getattr(first[name], "fc", first[name]).weight.shape[1] for name in levels}
    assert {n: c for n, c in channels.items() if n in ("res3", "res4")} == {
        "res3": 192,
        "res4": 576,
    }
    images, labels = torch.randn(4, 3, *SIZE), torch.tensor([0, 1, 2, 3])
    losses = net.train()(images, labels)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        assert net.eval()(images).shape == (4, net.embedding_dim)


def test_flops_differ_by_the_wider_fc_inputs_only() -> None:
    narrow, wide = count_multiply_adds(model("bottleneck")), count_multiply_adds(model("expanded"))
    # the backbone computes the same layers; the res3/res4 FC layers read 192 + 576 channels
    # instead of 32 + 96
    assert wide - narrow == DIM * ((192 - 32) + (576 - 96))


def test_model_file_carries_the_setting_and_rebuilds_identically(tmp_path) -> None:
    net = model("expanded").eval()
    config = Config(data=DataConfig(crop_height=SIZE[0], crop_width=SIZE[1]))
    save_reid_model(tmp_path / "model.pt", net, config, pids=list(range(5)))
    loaded, meta = load_reid_model(tmp_path / "model.pt")
    assert meta["model_config"]["mobilenet_taps"] == "expanded"
    assert loaded.backbone.stage_channels == EXPANDED
    images = torch.randn(3, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), net(images), rtol=0, atol=0)
    # a model file written before the setting existed rebuilds with the bottleneck taps
    state = torch.load(tmp_path / "model.pt", weights_only=False)
    old = model("bottleneck").eval()
    state["model_config"] = {k: v for k, v in old.config.to_dict().items() if k != "mobilenet_taps"}
    state["state_dict"] = old.state_dict()
    torch.save(state, tmp_path / "old.pt")
    assert load_reid_model(tmp_path / "old.pt")[0].backbone.stage_channels["res3"] == 32


def test_onnx_export_of_expanded_taps_matches_pytorch(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from personsearch.export.onnx import export_reid_onnx

    net = model("expanded").eval()
    report = export_reid_onnx(net, tmp_path / "expanded.onnx", SIZE)
    assert report.max_diff <= 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mobilenet_taps": "wide"}, "mobilenet_taps must be one of"),
        ({"mobilenet_taps": "expanded", "backbone": "resnet18"}, "mobilenet_v2 only"),
    ],
)
def test_bad_taps_are_config_errors(overrides, message) -> None:
    settings = {"num_classes": 3, "backbone": "mobilenet_v2", "pretrained": False} | overrides
    with pytest.raises(ConfigError, match=message):
        ReidConfig(**settings).resolved()
    with pytest.raises(ConfigError):
        build_backbone(settings["backbone"], mobilenet_taps=settings["mobilenet_taps"])
