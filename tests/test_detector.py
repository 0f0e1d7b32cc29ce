"""The CLSA detector (section 3.1): pooling, frozen first block, proposal sizes, coordinates, training.

Everything runs MobileNetV2 at a small input size so the file stays fast on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from personsearch.data.detection_dataset import (
    SceneDetectionDataset,
    collate_detection,
    hflip_boxes,
    sanitize_boxes,
)
from personsearch.data.scenes import Scene, xywh_to_xyxy
from personsearch.errors import ConfigError, WeightsUnavailableError
from personsearch.models.box_pooling import RegionPooler
from personsearch.models.detector import (
    DetectorConfig,
    PersonDetector,
    build_detector,
    first_block_parameters,
)

LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


def small_config(**overrides: object) -> DetectorConfig:
    values: dict[str, object] = {
        "backbone": "mobilenet_v2",
        "pretrained": False,
        "min_size": 128,
        "max_size": 224,
        "rpn_pre_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_train": 64,
        "rpn_post_nms_top_n_test": 64,
        "rpn_batch_size_per_image": 64,
        "box_batch_size_per_image": 32,
    }
    values.update(overrides)
    return DetectorConfig(**values)  # type: ignore[arg-type]


def person_target(boxes: list[list[float]]) -> dict[str, Tensor]:
    tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": tensor, "labels": torch.ones(len(tensor), dtype=torch.int64)}


# ---------------------------------------------------------------------------- pooling


def bilinear(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear sample of a C x H x W map at continuous pixel-centre coordinates (y, x)."""
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    dy, dx = y - y0, x - x0
    return (
        (1 - dy) * (1 - dx) * feature[:, y0, x0]
        + (1 - dy) * dx * feature[:, y0, x0 + 1]
        + dy * (1 - dx) * feature[:, y0 + 1, x0]
        + dy * dx * feature[:, y0 + 1, x0 + 1]
    )


def test_crop_resize_maxpool_matches_bilinear_crop_then_max_pool() -> None:
    rng = np.random.default_rng(0)
    feature = rng.normal(size=(3, 12, 16)).astype(np.float32)
    box = np.array([5.0, 6.0, 45.0, 38.0])  # image pixels; the map has stride 4 (image 48 x 64)
    stride = 4.0
    pooler = RegionPooler("crop_resize_maxpool", "res4")
    pooled = pooler(
        {"res4": torch.from_numpy(feature)[None]},
        [torch.tensor(box[None], dtype=torch.float32)],
        [(48, 64)],
    )
    assert pooled.shape == (1, 3, 7, 7)

    # the reference: 14 x 14 bilinear samples at cell centres of the box on the feature map
    # (pixel centres at +0.5, hence the -0.5), then 2 x 2 max pooling
    x1, y1, x2, y2 = box / stride - 0.5
    crop = np.empty((3, 14, 14), dtype=np.float64)
    for i in range(14):
        for j in range(14):
            y = y1 + (i + 0.5) * (y2 - y1) / 14
            x = x1 + (j + 0.5) * (x2 - x1) / 14
            crop[:, i, j] = bilinear(feature, y, x)
    expected = crop.reshape(3, 7, 2, 7, 2).max(axis=(2, 4))
    np.testing.assert_allclose(pooled[0].numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["crop_resize_maxpool", "roi_align", "roi_pool"])
def test_every_pooling_gives_7x7_regions_per_proposal(mode: str) -> None:
    feature = torch.randn(2, 5, 10, 12)  # two images, stride 16 (160 x 192 input)
    boxes = [
        torch.tensor([[0.0, 0.0, 50.0, 120.0], [10.0, 10.0, 11.0, 11.0]]),
        torch.tensor([[30.0, 20.0, 190.0, 150.0]]),
    ]
    pooled = RegionPooler(mode)({"res4": feature}, boxes, [(160, 192), (150, 180)])  # type: ignore[arg-type]
    assert pooled.shape == (3, 5, 7, 7)
    assert torch.isfinite(pooled).all()


def test_unknown_pooling_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pooling"):
        small_config(pooling="bilinear")
    with pytest.raises(
        ConfigError, match="unknown config key model.min_sise; valid keys in model: "
    ):
        DetectorConfig.from_dict({"min_sise": 10})


# ---------------------------------------------------------------------------- frozen block


def train_step_grads(detector: PersonDetector) -> None:
    detector.train()
    images = [torch.rand(3, 128, 160), torch.rand(3, 140, 128)]
    targets = [
        person_target([[20, 30, 60, 120], [90, 10, 130, 100]]),
        person_target([[5, 5, 60, 130]]),
    ]
    losses = detector(images, targets)
    sum(losses.values()).backward()


def test_frozen_first_block_gets_no_gradient_and_keeps_its_statistics() -> None:
    torch.manual_seed(0)
    detector = build_detector(small_config(freeze_first_block=True, frozen_batchnorm=False))
    frozen = first_block_parameters(detector)
    assert frozen and all(not p.requires_grad for p in frozen)
    first_bns = [
        m
        for name in ("stem", "res2")
        for m in detector.backbone.stages[name].modules()
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))
    ]
    assert first_bns and all(isinstance(m, FrozenBatchNorm2d) for m in first_bns)
    before = [p.detach().clone() for p in frozen]

    train_step_grads(detector)
    assert all(p.grad is None for p in frozen)
    res3 = list(detector.backbone.stages["res3"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in res3)
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.1)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, frozen, strict=True))


def test_unfrozen_first_block_is_trained() -> None:
    torch.manual_seed(0)
    detector = build_detector(small_config(freeze_first_block=False))
    train_step_grads(detector)
    first = first_block_parameters(detector)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in first)


# ---------------------------------------------------------------------------- proposals


def filtered_proposals(detector: PersonDetector, boxes: list[list[float]]) -> Tensor:
    """Run the RPN's own pre-NMS filtering and NMS on hand-made proposals of one image."""
    detector.eval()
    proposals = torch.tensor([boxes], dtype=torch.float32)
    objectness = torch.linspace(3.0, 1.0, len(boxes))[None]
    kept, _ = detector.rpn.filter_proposals(proposals, objectness, [(200, 200)], [len(boxes)])
    return kept[0]


def test_proposals_of_every_size_survive_filtering() -> None:
    boxes = [
        [10.0, 10.0, 10.5, 10.25],  # half a pixel wide, a quarter high
        [50.0, 50.0, 53.0, 54.0],  # 3 x 4
        [100.0, 20.0, 110.0, 60.0],  # narrower than py-faster-rcnn's 16
        [20.0, 100.0, 80.0, 190.0],
    ]
    kept = filtered_proposals(build_detector(small_config(keep_small_proposals=True)), boxes)
    assert sorted(kept.tolist()) == sorted(boxes)

    kept = filtered_proposals(build_detector(small_config(keep_small_proposals=False)), boxes)
    assert kept.tolist() == [boxes[3]]


def test_top_256_proposals_are_kept_after_nms() -> None:
    assert (
        DetectorConfig().rpn_post_nms_top_n_train == DetectorConfig().rpn_post_nms_top_n_test == 256
    )
    detector = build_detector(
        small_config(rpn_post_nms_top_n_train=256, rpn_post_nms_top_n_test=256)
    )
    assert detector.rpn._post_nms_top_n == {"training": 256, "testing": 256}
    grid = [
        [float(x), float(y), x + 8.0, y + 8.0] for x in range(0, 200, 10) for y in range(0, 200, 10)
    ]
    assert len(filtered_proposals(detector, grid)) == 256  # 400 disjoint boxes: NMS keeps all


# ---------------------------------------------------------------------------- data edge cases


def test_images_without_persons_train() -> None:
    torch.manual_seed(0)
    detector = build_detector(small_config())
    detector.train()
    empty = person_target([])
    for targets in ([empty, person_target([[20, 30, 60, 120]])], [empty, empty]):
        losses = detector([torch.rand(3, 128, 160), torch.rand(3, 140, 128)], targets)
        assert set(losses) == set(LOSSES)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()


class _FixedProposals(nn.Module):
    """An RPN stand-in proposing fixed boxes given as fractions of the resized image."""

    def __init__(self, fractions: list[float]) -> None:
        super().__init__()
        self.fractions = torch.tensor(fractions)

    def forward(self, images, features, targets=None):  # type: ignore[no-untyped-def]
        boxes = []
        for height, width in images.image_sizes:
            boxes.append((self.fractions * torch.tensor([width, height, width, height]))[None])
        return boxes, {}


class _ConfidentPerson(nn.Module):
    """A box predictor that calls every region a person and moves no box."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = torch.tensor([-10.0, 10.0]).expand(len(x), 2)
        return logits, torch.zeros(len(x), 8)


def test_boxes_come_back_in_the_input_image_coordinates() -> None:
    detector = build_detector(small_config(min_size=400, max_size=1000)).eval()
    detector.rpn = _FixedProposals([0.25, 0.1, 0.5, 0.9])  # type: ignore[assignment]
    detector.roi_heads.box_predictor = _ConfidentPerson()
    image = torch.rand(3, 200, 300)  # resized to 400 x 600 inside the model
    with torch.no_grad():
        (output,) = detector([image])
    assert set(output) == {"boxes", "scores"}
    torch.testing.assert_close(output["boxes"], torch.tensor([[75.0, 20.0, 150.0, 180.0]]))


def test_score_threshold_keeps_only_detections_above_it() -> None:
    detector = build_detector(small_config()).eval()
    assert detector.score_thresh == 0.5
    with torch.no_grad():
        detector.score_thresh = 0.0
        everything = detector([torch.rand(3, 128, 160)])[0]["scores"]
        detector.score_thresh = float(everything.median())
        above = detector([torch.rand(3, 128, 160)])[0]["scores"]
    assert len(everything) > 0
    assert (above >= detector.score_thresh).all()  # kept at or above, as the evaluator does


def test_dataset_sanitises_flips_and_collates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    path = tmp_path / "s1.jpg"
    Image.new("RGB", (100, 60), (10, 20, 30)).save(path)
    boxes = np.array([[10, 5, 30, 50], [-5, 0, 20, 70], [50, 10, 50, 40]], dtype=np.float32)
    scenes = [Scene("s1.jpg", path, boxes, [1, -1, 2]), Scene("s1.jpg", path, np.zeros((0, 4)), [])]
    np.testing.assert_array_equal(sanitize_boxes(boxes, 100, 60), [[10, 5, 30, 50], [0, 0, 20, 60]])
    torch.testing.assert_close(
        hflip_boxes(torch.tensor([[10.0, 5, 30, 50]]), 100), torch.tensor([[70.0, 5, 90, 50]])
    )

    plain = SceneDetectionDataset(scenes)
    image, target = plain[0]
    assert image.shape == (3, 60, 100) and image.dtype == torch.float32 and image.max() <= 1
    assert target["labels"].tolist() == [1, 1]
    flipped = SceneDetectionDataset(scenes, flip_prob=1.0)[(0, 0, 0)][1]["boxes"]
    torch.testing.assert_close(flipped, hflip_boxes(target["boxes"], 100))
    images, targets = collate_detection([plain[0], plain[1]])
    assert len(images) == 2 and targets[1]["boxes"].shape == (0, 4)


# ---------------------------------------------------------------------------- training


def synthetic_scenes(folder, count: int) -> list[Scene]:  # type: ignore[no-untyped-def]
    """The first scenes of the built-in synthetic world's tiny preset, rendered into `folder`."""
    from personsearch.data.synthetic import PRESETS, plan_world, render_scene

    specs, _ = plan_world(PRESETS["tiny"], 0, folder)
    scenes = []
    for spec in specs[:count]:
        result = render_scene(spec)
        scenes.append(
            Scene(result.name, spec.path, xywh_to_xyxy(np.array(result.boxes)), result.pids)
        )
    return scenes


def mean_losses(
    detector: PersonDetector,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    repeats: int = 3,
) -> dict[str, float]:
    """Training-mode losses without updates, averaged over fixed seeds (the samplers are random)."""
    totals = dict.fromkeys(LOSSES, 0.0)
    with torch.no_grad():
        for seed in range(repeats):
            torch.manual_seed(seed)
            for name, value in detector(images, targets).items():
                totals[name] += float(value) / repeats
    return totals


def test_a_short_training_run_on_the_synthetic_world_lowers_every_loss(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    try:
        detector = build_detector(small_config(pretrained=True, missing_weights="raise"))
    except WeightsUnavailableError as error:
        pytest.skip(f"offline MobileNetV2 weights unavailable: {error}")
    scenes = synthetic_scenes(tmp_path, 2)
    images, targets = collate_detection([SceneDetectionDataset(scenes)[i] for i in range(2)])
    assert all(len(t["boxes"]) for t in targets)
    detector.train()
    before = mean_losses(detector, images, targets, repeats=2)
    optimizer = torch.optim.SGD(
        [p for p in detector.parameters() if p.requires_grad], lr=0.005, momentum=0.9
    )
    for _ in range(12):
        losses = detector(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = mean_losses(detector, images, targets, repeats=2)
    for name in LOSSES:
        assert after[name] < before[name], (name, before[name], after[name])
