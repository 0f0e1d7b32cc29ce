"""CIFAR-100: the binary reader, the CIFAR ResNets, CLSA on them with top-1 scoring, and a CPU
smoke run of the shipped cifar100-classify config (ResNet-110, a few images, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cifar_fixture import cifar_records, encode_records, write_cifar100

from personsearch.cli import main
from personsearch.config import load_config
from personsearch.data.cifar100 import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CifarImageDataset,
    load_cifar100,
    read_cifar_bin,
)
from personsearch.engine.classify_task import check_classify_config, top1_scores
from personsearch.errors import ConfigError, DatasetError
from personsearch.models.backbones import build_backbone
from personsearch.models.reid import build_reid_model

#: the shipped config, shrunk to seconds on a CPU (the network stays ResNet-110)
SMOKE = [
    "optim.batch_size=4",
    "optim.iterations=2",
    "optim.milestones=[1]",
    "optim.warmup_iterations=1",
    "run.workers=0",
    "run.progress=false",
    "run.log_period=1",
    "run.checkpoint_period=2",
    "run.eval_batch_size=8",
]


def test_records_decode_in_the_release_layout(tmp_path):
    images, fine = cifar_records(3)
    coarse = np.array([19, 0, 7])
    path = tmp_path / "train.bin"
    path.write_bytes(encode_records(images, fine, coarse))
    assert path.stat().st_size == 3 * 3074
    split = read_cifar_bin(path)
    np.testing.assert_array_equal(split.images, images)
    assert split.fine.tolist() == [0, 1, 2] and split.coarse.tolist() == [19, 0, 7]
    # byte 2 is the red value of the top-left pixel, byte 2 + 1024 its green, + 2048 its blue
    raw = path.read_bytes()
    assert tuple(raw[2 + k * 1024] for k in range(3)) == tuple(images[0, 0, 0])
    assert raw[2 + 31] == images[0, 0, 31, 0] and raw[2 + 32] == images[0, 1, 0, 0]


def test_bad_binary_files(tmp_path):
    images, fine = cifar_records(4)
    path = tmp_path / "test.bin"
    path.write_bytes(encode_records(images, fine)[:-100])
    with pytest.raises(
        DatasetError,
        match=r"test.bin is truncated or not a CIFAR-100 binary file: "
        r"its 12,196 bytes are 3 records of 3,074 bytes and 2,974 bytes over",
    ):
        read_cifar_bin(path)
    fine[2] = 100
    path.write_bytes(encode_records(images, fine, coarse=np.zeros(4, dtype=np.int64)))
    with pytest.raises(
        DatasetError,
        match=r"record 2 \(byte 6,148\) has fine label 100, outside "
        r"0-99 \(1 such records\)",
    ):
        read_cifar_bin(path)
    fine[2] = 5
    path.write_bytes(encode_records(images, fine, coarse=np.full(4, 20)))
    with pytest.raises(DatasetError, match="record 0 .* has coarse label 20, outside 0-19"):
        read_cifar_bin(path)
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="holds no records"):
        read_cifar_bin(path)


def test_release_folder(tmp_path):
    root = write_cifar100(tmp_path / "cifar-100-binary", train=30, test=10)
    dataset = load_cifar100(root)
    assert (len(dataset.train), len(dataset.test)) == (30, 10)
    assert dataset.fine_names[:2] == ("class0", "class1") and len(dataset.coarse_names) == 20
    with pytest.raises(
        DatasetError,
        match=r"train.bin not found under .*: is .* the unpacked "
        r"CIFAR-100 binary release.*use that as the root",
    ):
        load_cifar100(tmp_path)
    (root / "fine_label_names.txt").write_text("apple\npear\n")
    with pytest.raises(
        DatasetError, match="fine_label_names.txt lists 2 class names, expected 100"
    ):
        load_cifar100(root)
    (root / "test.bin").unlink()
    with pytest.raises(DatasetError, match="test.bin not found under"):
        load_cifar100(root)
    # the Python release is named, never unpickled
    python = tmp_path / "cifar-100-python"
    python.mkdir()
    for name in ("train", "test", "meta"):
        (python / name).write_bytes(b"\x80\x04 would run code")
    with pytest.raises(
        DatasetError,
        match="Python .pickle. release of CIFAR-100, which is not "
        "read .loading a pickle runs code.: download the binary version",
    ):
        load_cifar100(python)


def test_dataset_items(tmp_path):
    split = load_cifar100(write_cifar100(tmp_path / "c", train=8, test=4)).train
    plain = CifarImageDataset(split)
    image, label = plain[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 3
    expected = (split.images[3, 5, 7] / 255.0 - np.array(CIFAR100_MEAN)) / np.array(CIFAR100_STD)
    np.testing.assert_allclose(image[:, 5, 7].numpy(), expected, rtol=1e-5)
    assert torch.equal(plain[(3, 0, 0)][0], image)  # evaluation: no augmentation
    train = CifarImageDataset(split, train=True)
    first, again = train[(3, 0, 0)][0], train[(3, 0, 0)][0]
    assert torch.equal(first, again)  # a function of (seed, epoch, index)
    epochs = [train[(3, 0, epoch)][0] for epoch in range(6)]
    assert any(not torch.equal(epochs[0], other) for other in epochs[1:])
    # a 32 x 32 window of the image padded by 4 zeros (the mean colour), maybe flipped
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    for epoch, augmented in enumerate(epochs):
        rng = np.random.default_rng((0, epoch, 3))
        top, left = rng.integers(0, 9, size=2)
        window = padded[:, top : top + 32, left : left + 32]
        assert torch.equal(augmented, window.flip(-1) if rng.random() < 0.5 else window)


def test_cifar_resnets():
    backbone = build_backbone("cifar_resnet110")
    assert backbone.stage_names == ("res2", "res3", "res4")
    # He et al.: 1.7 M parameters; option-A shortcuts add none
    assert round(sum(p.numel() for p in backbone.parameters()) / 1e6, 1) == 1.7
    assert sum(1 for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)) == 109
    shallow = build_backbone("cifar_resnet20")
    stages = shallow(torch.randn(2, 3, 32, 32))
    assert {k: tuple(v.shape[1:]) for k, v in stages.items()} == {
        "res2": (16, 32, 32),
        "res3": (32, 16, 16),
        "res4": (64, 8, 8),
    }
    assert shallow.stage_strides == {"res2": 1, "res3": 2, "res4": 4}
    # multiply-adds on one 32 x 32 image (He et al.: ResNet-110 is about 0.25 G)
    from personsearch.commands.flops import measure

    rows = {row["model"]: row for row in measure("cifar_resnet20", ["plain", "clsa"], 32, 32)}
    assert rows["plain"]["gflops"] == pytest.approx(0.041, abs=0.001)
    assert rows["clsa"]["levels"] == ["res2", "res3", "res4"]
    with pytest.raises(ConfigError, match="cifar_resnet20 has no pretrained weights"):
        build_backbone("cifar_resnet20", pretrained=True)
    with pytest.raises(ConfigError, match=r"cannot freeze \['res5'\]: stages are stem, res2"):
        build_backbone("cifar_resnet20", frozen_stages=["res5"])


def test_clsa_over_the_three_stages():
    model = build_reid_model(
        {
            "num_classes": 100,
            "backbone": "cifar_resnet20",
            "pretrained": False,
            "levels": "4-3-2",
            "feature_dim": 32,
        }
    )
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 5, 99, 5])
    losses = model.train()(images, labels)
    assert set(losses) == {"ce", "kl"}  # CE on the top level, T^2 KL aligning res2 and res3
    sum(losses.values()).backward()
    outputs = model.eval().outputs(images)
    assert outputs.level_names == ("res2", "res3", "res4")
    assert [tuple(t.shape) for t in outputs.logits] == [(4, 100)] * 3
    # every head's default levels are the backbone's top stages (ResNet-50's: res3-res5)
    plain = build_reid_model(
        {"num_classes": 100, "backbone": "cifar_resnet20", "pretrained": False, "head": "plain"}
    )
    assert plain.level_names == ("res4",) and plain.feature_dims == (64,)
    assert build_reid_model(
        {"num_classes": 100, "backbone": "cifar_resnet20", "pretrained": False}
    ).level_names == ("res2", "res3", "res4")


def test_top1_scores():
    labels = np.array([0, 1, 2])
    # per image: [res2 logits | res4 logits], 3 classes each
    logits = np.array(
        [
            [5, 0, 0, 0, 1, 0],  # res2 right, top wrong, sum right
            [0, 0, 9, 0, 1, 0],  # res2 wrong, top right, sum wrong
            [0, 0, 1, 0, 0, 1],
        ],
        dtype=np.float32,
    )  # both right
    scores = top1_scores(logits, labels, ("res2", "res4"))
    assert scores == pytest.approx(
        {"top1": 2 / 3, "top1_concat": 2 / 3, "top1_res2": 2 / 3, "top1_res4": 2 / 3, "images": 3}
    )
    assert top1_scores(logits[:, 3:], labels, ("res4",)) == pytest.approx(
        {"top1": 2 / 3, "top1_concat": 2 / 3, "images": 3}
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.crop_height=64", "CIFAR images are 32 x 32 and are not resized"),
        ("data.random_erasing=0.5", "data.random_erasing=0.5 applies to re-id crops"),
        ("data.dataset=market1501", "classification needs one of cifar100"),
        ("model.num_classes=10", "model.num_classes is set from the dataset's classes"),
        (
            "model.levels=5-4-3",
            r"backbone cifar_resnet110 has no stage res5 \(its stages: res2, "
            r"res3, res4\): set levels to some of them",
        ),
        ("model.pretrained=true", "cifar_resnet110 has no pretrained weights"),
    ],
)
def test_settings_the_task_refuses(override, message):
    with pytest.raises(ConfigError, match=message):  # when the config is built, or by the task
        config = load_config("cifar100-classify", [override])
        check_classify_config(config)
        build_backbone(config.model.backbone, config.model.pretrained)


def test_check_data(tmp_path, capsys):
    root = write_cifar100(tmp_path / "cifar-100-binary", train=200, test=100)
    assert main(["check-data", "--dataset", "cifar100", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"cifar100 at {root}",
        "  train: 200 images (train.bin), 100 of 100 classes, 2 images per class",
        "  test: 100 images (test.bin), 100 of 100 classes, 1 images per class",
        "  class names (fine_label_names.txt): found",
        "OK",
    ]
    assert "warning: train.bin: 200 records; the release has 50000" in captured.err
    (root / "test.bin").write_bytes((root / "test.bin").read_bytes()[:5000])
    assert main(["check-data", "--dataset", "cifar100", "--root", str(root)]) == 1
    assert "test.bin is truncated" in capsys.readouterr().err


def test_smoke_run_of_the_shipped_config(tmp_path, capsys):
    """`train classify --config cifar100-classify` on a tiny set: ResNet-110 with CLSA, 2 steps,
    then model.pt reloaded by evaluate-classify gives the same top-1."""
    root = write_cifar100(tmp_path / "cifar-100-binary", train=16, test=12)
    run = tmp_path / "run"
    args = [
        "train",
        "classify",
        "--config",
        "cifar100-classify",
        "--out",
        str(run),
        f"data.root={root}",
        *SMOKE,
    ]
    assert main(args) == 0
    assert "final evaluation: images=12, top1=" in capsys.readouterr().out
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert {"top1", "top1_concat", "top1_res2", "top1_res3", "top1_res4"} <= set(final)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"ce", "kl"} <= set(records[0]) and records[0]["split"] == "train"
    assert main(["evaluate-classify", "--run", str(run), "--workers", "0", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] == pytest.approx(final["top1"])
    assert metrics["top1_concat"] == pytest.approx(final["top1_concat"])
    assert metrics["backbone"] == "cifar_resnet110" and metrics["head"] == "clsa"
    assert (run / "eval-classify-cifar100.json").is_file()
    assert main(["evaluate-classify", "--run", str(tmp_path)]) == 1
    assert "config.yaml not found" in capsys.readouterr().err
