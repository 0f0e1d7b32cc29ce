"""The FLOPs counter: multiply-adds of known layers, the models' costs, the `flops` command."""

from __future__ import annotations

import json

import pytest
from torch import nn

from personsearch.cli import main
from personsearch.models.flops import PAPER_TABLE4_GFLOPS, count_multiply_adds, gflops
from personsearch.models.reid import ReidConfig, ReidModel


def reid(head: str, backbone: str = "resnet18", **overrides) -> ReidModel:
    return ReidModel(
        ReidConfig(num_classes=7, head=head, backbone=backbone, pretrained=False, **overrides)
    )


def test_counts_multiply_adds_of_known_layers() -> None:
    assert count_multiply_adds(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5)), 32, 32) == (
        3 * 32 * 32 * 5
    )
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_multiply_adds(conv, 256, 128) == 8 * 3 * 9 * 256 * 128


def test_counting_restores_training_mode() -> None:
    model = reid("plain").train()
    count_multiply_adds(model, 64, 32)
    assert model.training


def test_resnet50_plain_and_clsa_costs_match_the_paper() -> None:
    plain, clsa = gflops(reid("plain", "resnet50")), gflops(reid("clsa", "resnet50"))
    # Convolutions + FC of ResNet-50 on 256 x 128: within 0.5% of the paper's 2.678.
    assert plain == pytest.approx(PAPER_TABLE4_GFLOPS["plain"], rel=5e-3)
    # CLSA adds only the three pooled FC layers (512 + 1024 + 2048 inputs, 512 outputs each):
    # +0.0018 G, the paper's 2.678 -> 2.680; the classifiers are training-only.
    assert (clsa - plain) * 1e9 == pytest.approx((512 + 1024 + 2048) * 512)


def test_fpn_cost_is_backbone_plus_laterals_smoothing_and_heads() -> None:
    plain, fpn = (
        count_multiply_adds(reid("plain")),
        count_multiply_adds(reid("fpn", feature_dim=64)),
    )
    channels = {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    extra = 0
    for level, width in channels.items():
        pixels = (256 // strides[level]) * (128 // strides[level])
        extra += (width * 256 + 256 * 256 * 9) * pixels + 256 * 64  # lateral, 3x3 smooth, FC
    assert fpn - plain == extra


def test_mst_cost_is_the_plain_cost_at_each_scale() -> None:
    plain = reid("plain")
    expected = sum(count_multiply_adds(plain, 256 * s // 4, 128 * s // 4) for s in (2, 3, 4))
    assert count_multiply_adds(reid("mst", mst_scales=(1.0, 0.75, 0.5))) == expected


def test_flops_command_json(capsys) -> None:
    assert main(["flops", "--backbone", "resnet18", "--models", "clsa,plain", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["model"]: row for row in report["models"]}
    assert set(rows) == {"clsa", "plain"}
    assert rows["clsa"]["embedding_dim"] == 1536 and rows["plain"]["embedding_dim"] == 512
    assert rows["clsa"]["gflops"] > rows["plain"]["gflops"] > 1.0
    assert rows["clsa"]["paper_gflops"] is None  # the paper's figures are for ResNet-50 only


def test_flops_command_table_and_bad_model(capsys) -> None:
    assert main(["flops", "--backbone", "mobilenet_v2", "--models", "plain"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2" in out and "ResNet-50" in out
    assert main(["flops", "--models", "transformer"]) == 1
    assert "unknown ['transformer']" in capsys.readouterr().err


def test_paper_table4_figures() -> None:
    assert PAPER_TABLE4_GFLOPS == {
        "plain": 2.678,
        "pyramid": 2.678,
        "clsa": 2.680,
        "fpn": 4.519,
        "mst": 8.034,
    }
