"""Typed configs: defaults are the paper's, overrides are type-checked, resolved YAML round-trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from personsearch.config import (
    Config,
    OptimConfig,
    load_config,
    parse_overrides,
    resolve_config_path,
    save_config,
    shipped_configs,
)
from personsearch.errors import ConfigError
from personsearch.models.detector import DetectorConfig
from personsearch.models.reid import ReidConfig


def test_defaults_are_the_paper_reid_settings():
    optim, data = Config().optim, Config().data
    assert (optim.lr, optim.momentum, optim.weight_decay) == (0.01, 0.9, 1e-5)
    assert (optim.batch_size, optim.epochs, optim.milestones, optim.gamma) == (
        64,
        100,
        [40, 80],
        0.1,
    )
    assert (data.crop_height, data.crop_width, data.flip, data.det_iou) == (256, 128, True, 0.5)


def test_shipped_configs_resolve_by_name_and_keep_paper_settings():
    assert {"cuhk-sysu-reid", "prw-reid", "market1501-reid", "synthetic-reid"} <= set(
        shipped_configs()
    )
    for name in ("cuhk-sysu-reid", "prw-reid", "market1501-reid"):
        config = load_config(name)
        assert config.name == name and config.task == "reid"
        assert config.model.backbone == "resnet50"
        assert config.optim.weight_decay == 1e-5 and config.optim.milestones == [40, 80]
        assert (config.data.crop_height, config.data.crop_width) == (256, 128)
    assert resolve_config_path("synthetic-reid.yaml").name == "synthetic-reid.yaml"


def test_overrides_are_parsed_and_typed():
    config = load_config(
        "synthetic-reid",
        [
            "optim.lr=1e-3",
            "optim.epochs=3",
            "optim.milestones=[2]",
            "data.flip=false",
            "model.backbone=resnet18",
            "model.kl_weight=0.5",
            "run.out=/tmp/x",
        ],
    )
    assert config.optim.lr == pytest.approx(1e-3) and isinstance(config.optim.lr, float)
    assert config.optim.epochs == 3 and config.optim.milestones == [2]
    assert config.data.flip is False
    assert config.model.backbone == "resnet18"
    assert config.model.kl_weight == 0.5
    assert str(config.run_dir) == "/tmp/x"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key optim.lrr; valid keys in optim: amp"),
        ("nope.x=1", "unknown config key nope"),
        ("optim.lr=abc", "optim.lr: expected a number"),
        ("optim.epochs=2.5", "optim.epochs: expected an integer"),
        ("data.flip=3", "data.flip: expected true or false"),
        ("optim.milestones=[500]", "optim.milestones"),
        ("optim.lr", "is not key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("synthetic-reid", [override])


def test_unknown_config_name_lists_shipped_ones():
    with pytest.raises(ConfigError, match="synthetic-reid"):
        load_config("no-such-config")


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)
    bad.write_text("data:\n  crop_hieght: 3\n")
    with pytest.raises(ConfigError, match="data.crop_hieght.*crop_height"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    config = load_config("prw-reid", ["optim.iterations=1000", "optim.milestones=[300,600]"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert again.iteration_based and again.fingerprint() == config.fingerprint()
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw["optim"]["weight_decay"] == 1e-5


def test_fingerprint_follows_the_model_not_the_schedule():
    base = load_config("synthetic-reid")
    assert load_config("synthetic-reid", ["optim.epochs=50"]).fingerprint() == base.fingerprint()
    assert (
        load_config("synthetic-reid", ["model.feature_dim=64"]).fingerprint() != base.fingerprint()
    )


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


# ------------------------------------------------------------------ one builder for every config


def test_configs_are_frozen_and_checked_when_constructed():
    config = load_config("synthetic-reid")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 0.5  # type: ignore[misc]
    with pytest.raises(ConfigError, match="config key optim.lr: expected a number"):
        OptimConfig(lr="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config key model.feature_dim: expected an integer"):
        ReidConfig(feature_dim=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config key model.min_size: expected an integer"):
        DetectorConfig(min_size="big")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="optim.milestones=\\[500\\]"):
        OptimConfig(epochs=10, milestones=[500])  # each section checks its own values
    # the harmless conversions: an int for a float, a list for a tuple
    assert ReidConfig(temperature=2, frozen_stages=["stem"]).frozen_stages == ("stem",)
    assert isinstance(ReidConfig(temperature=2).temperature, float)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("synthetic-reid", "ReidConfig"),
        ("synthetic-detector", "DetectorConfig"),
        ("cifar100-classify", "ReidConfig"),
    ],
)
def test_the_model_section_is_typed_by_task(name, kind):
    config = load_config(name)
    assert type(config.model).__name__ == kind
    if kind == "ReidConfig":
        assert config.model.num_classes is None  # the task sets it from the data


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        ("synthetic-reid", "model.dimm=3", "unknown config key model.dimm; valid keys in model: "),
        ("synthetic-detector", "model.poolng=x", "unknown config key model.poolng; valid keys in "),
        (
            "synthetic-reid",
            "model.feature_dim=wide",
            "config key model.feature_dim: expected an integer",
        ),
        (
            "synthetic-detector",
            "model.min_size=[1]",
            "config key model.min_size: expected an integer",
        ),
        ("synthetic-reid", "model.head=vit", "unknown re-id head 'vit'"),
        ("synthetic-reid", "model.mobilenet_taps=wide", "mobilenet_taps must be one of"),
    ],
)
def test_a_bad_model_section_names_its_key_when_the_config_is_built(config, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config, [override])


def test_the_saved_model_section_is_the_one_written(tmp_path):
    # as written (an int stays an int): config.yaml and the fingerprint of earlier runs hold
    config = load_config(
        "synthetic-reid", ["model.head=plain", "model.levels=5", "model.temperature=3"]
    )
    assert config.to_dict()["model"] == {
        "head": "plain",
        "backbone": "mobilenet_v2",
        "pretrained": True,
        "levels": 5,
        "feature_dim": 256,
        "temperature": 3,
    }
    assert config.model.levels == "5" and config.model.temperature == 3.0
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config and again.to_dict() == config.to_dict()
    assert again.fingerprint() == config.fingerprint()
    # a replaced section (no longer as written) saves the fields that differ from the defaults
    plain = dataclasses.replace(config, model=ReidConfig(head="plain", levels="5"))
    assert plain.to_dict()["model"] == {"head": "plain", "levels": "5"}


def test_model_configs_round_trip_through_to_dict():
    reid = ReidConfig(num_classes=3, head="fpn", backbone="resnet18").resolved()
    assert ReidConfig.from_dict(reid.to_dict()) == reid
    detector = DetectorConfig(anchor_sizes=(16, 32), pooling="roi_align")
    assert DetectorConfig.from_dict(detector.to_dict()) == detector
    assert detector.to_dict()["anchor_sizes"] == [16, 32]


def test_shipped_configs_resolve_as_before():
    # to_dict (a run's config.yaml) and fingerprint of every shipped config, as written by the
    # code before the config builder was unified (commit c8713cf): run folders must not change
    expected = json.loads((Path(__file__).parent / "shipped_configs.json").read_text())
    assert sorted(expected) == shipped_configs()
    for name, saved in expected.items():
        config = load_config(name)
        assert config.to_dict() == saved["to_dict"], name
        assert config.fingerprint() == saved["fingerprint"], name
