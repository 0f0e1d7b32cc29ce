"""Re-id crops from scene records, the crop cache, transforms and the epoch sampler."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from personsearch.data.crops import (
    CropImageDataset,
    CropSample,
    build_crop_cache,
    crop_cache_path,
    crop_file_samples,
    cut_crop,
    identity_map,
    load_detections,
    scene_crop_samples,
    scene_eval_samples,
)
from personsearch.data.samplers import EpochSampler, ShardSampler
from personsearch.data.scenes import UNLABELED, Crop, Scene
from personsearch.data.transforms import CropTransform
from personsearch.errors import ResultsError


def make_scene(tmp_path, name, boxes, pids, seed=0, size=(80, 60)):
    rng = np.random.default_rng(seed)
    path = tmp_path / name
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return Scene(name, path, np.asarray(boxes, np.float32), np.asarray(pids))


@pytest.fixture
def scenes(tmp_path):
    return [
        make_scene(
            tmp_path,
            "a.png",
            [[0, 0, 20, 40], [30, 5, 50, 45], [55, 10, 75, 50]],
            [7, UNLABELED, 3],
            seed=1,
        ),
        make_scene(tmp_path, "b.png", [[10, 10, 30, 50], [40, 0, 60, 40]], [3, 9], seed=2),
    ]


def test_box_iou():
    from personsearch.boxes import box_iou

    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_training_crops_are_labelled_boxes_plus_matching_detections(scenes):
    detections = {
        "a.png": np.array(
            [
                [1, 0, 21, 40],  # IoU 0.9 with pid 7 -> kept as pid 7
                [31, 5, 51, 45],  # matches the unlabelled person -> dropped
                [55, 30, 75, 70],  # IoU < 0.5 with pid 3 -> dropped
            ],
            np.float32,
        )
    }
    samples = scene_crop_samples(scenes, detections, iou_threshold=0.5)
    gt = [s for s in samples if s.source == "gt"]
    det = [s for s in samples if s.source == "det"]
    assert [s.pid for s in gt] == [7, 3, 3, 9]
    assert [(s.pid, s.box) for s in det] == [(7, (1.0, 0.0, 21.0, 40.0))]
    assert identity_map(samples) == {3: 0, 7: 1, 9: 2}


def test_detection_matching_prefers_the_best_overlap_even_if_unlabelled(tmp_path):
    scene = make_scene(tmp_path, "c.png", [[0, 0, 20, 40], [4, 0, 24, 40]], [5, UNLABELED])
    # IoU 0.67 with pid 5 but 0.9 with the unlabelled person: it shows the unlabelled one
    det = {"c.png": np.array([[3, 0, 23, 40]], np.float32)}
    assert [s.source for s in scene_crop_samples([scene], det)] == ["gt"]


def test_eval_split_uses_images_as_cameras(scenes):
    query, gallery = scene_eval_samples(scenes)
    assert [s.pid for s in gallery] == [7, 3, 3, 9]
    assert [(s.pid, s.camera) for s in query] == [(3, 0)]  # only pid 3 is seen in two images


def test_load_detections_round_trip_and_errors(tmp_path):
    path = tmp_path / "det.npz"
    boxes = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(
        path,
        image_names=np.array(["x.jpg", "y.jpg", "z.jpg"]),
        det_boxes=boxes,
        det_image=[1, 0, 1],
    )
    found = load_detections(path)
    np.testing.assert_array_equal(found["x.jpg"], boxes[[1]])
    np.testing.assert_array_equal(found["y.jpg"], boxes[[0, 2]])
    assert found["z.jpg"].shape == (0, 4)
    # the layout `personsearch detect` writes: low-scored detections are left out
    np.savez(
        path,
        image_names=np.array(["x.jpg", "y.jpg"]),
        det_boxes=boxes,
        det_image=[1, 0, 1],
        det_scores=np.array([0.9, 0.2, 0.5], dtype=np.float32),
    )
    found = load_detections(path)
    np.testing.assert_array_equal(found["y.jpg"], boxes[[0, 2]])
    assert found["x.jpg"].shape == (0, 4)
    np.savez(path, image_names=np.array(["x.jpg"]), det_boxes=boxes)
    with pytest.raises(ResultsError, match="lacks arrays"):
        load_detections(path)
    with pytest.raises(ResultsError, match="not found"):
        load_detections(tmp_path / "missing.npz")


def test_cut_crop_clips_to_the_image():
    image = Image.new("RGB", (10, 8))
    assert cut_crop(image, (-5.0, -5.0, 3.2, 4.0)).size == (4, 4)
    assert cut_crop(image, (9.5, 7.5, 30.0, 30.0)).size == (1, 1)
    assert cut_crop(image, None).size == (10, 8)


def test_dataset_resizes_and_cache_gives_identical_pixels(scenes, tmp_path):
    samples = scene_crop_samples(scenes)
    transform = CropTransform(32, 16, flip=True)
    plain = CropImageDataset(samples, transform)
    cache = tmp_path / "cache"
    assert build_crop_cache(samples, cache) == len(samples)
    assert build_crop_cache(samples, cache) == 0  # complete: nothing left to write
    assert all(crop_cache_path(cache, s).is_file() for s in samples)
    cached = CropImageDataset(samples, transform, cache_dir=cache)
    for key in [0, (1, 5, 2), (3, 5, 2)]:
        image, label = plain[key]
        assert image.shape == (3, 32, 16) and image.dtype == torch.float32
        torch.testing.assert_close(cached[key][0], image, rtol=0, atol=0)
        assert label == identity_map(samples)[samples[key if isinstance(key, int) else key[0]].pid]


def test_augmentation_is_a_function_of_seed_epoch_and_index(scenes):
    dataset = CropImageDataset(scene_crop_samples(scenes), CropTransform(32, 16, flip=True))
    runs = [dataset[(0, 1, epoch)][0] for epoch in range(8)]
    assert torch.equal(dataset[(0, 1, 3)][0], runs[3])
    flipped = [torch.equal(r, runs[0].flip(-1)) for r in runs]
    same = [torch.equal(r, runs[0]) for r in runs]
    assert all(f or s for f, s in zip(flipped, same, strict=True)) and any(flipped[1:])


def test_optional_augmentations_keep_shape_and_change_pixels():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 30, 3), np.uint8))
    plain = CropTransform(32, 16)(image)
    augmented = CropTransform(32, 16, random_erasing=1.0, color_jitter=0.4, lowres_prob=1.0)
    out = augmented(image, np.random.default_rng(3))
    assert out.shape == plain.shape and not torch.equal(out, plain)
    assert (out == 0).all(dim=0).any()  # the erased rectangle


def test_market_crops_are_whole_files(tmp_path):
    path = tmp_path / "0002_c1s1_000451_03.jpg"
    Image.new("RGB", (64, 128), (200, 10, 10)).save(path)
    samples = crop_file_samples([Crop(path, 2, 1)])
    assert samples[0].box is None and samples[0].camera == 1
    image, label = CropImageDataset(samples, CropTransform(32, 16))[0]
    assert image.shape == (3, 32, 16) and label == 0


def test_epoch_sampler_shards_whole_batches_and_skips_on_resume():
    full = EpochSampler(10, batch_size=4, seed=3)
    full.set_epoch(2)
    order = [key[0] for key in full]
    assert len(order) == 8 and len(set(order)) == 8 and len(full) == 8
    assert all(key[1:] == (3, 2) for key in full)
    full.set_epoch(2, start_batch=1)
    assert [key[0] for key in full] == order[4:]
    ranks = [EpochSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    shards = [[k[0] for k in r] for r in ranks]
    assert shards[0][:2] + shards[1][:2] == order[:4]  # rank slices of each global batch
    assert sorted(shards[0] + shards[1]) == sorted(order)
    full.set_epoch(3)
    assert [k[0] for k in full] != order


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))


def test_cache_never_serves_a_replaced_image(tmp_path):
    """A dataset regenerated at the same path (same boxes) gets fresh crops, not the old ones."""
    image_path = tmp_path / "scene.png"
    Image.new("RGB", (20, 20), (200, 0, 0)).save(image_path)
    sample = CropSample(image_path, (2.0, 2.0, 12.0, 18.0), pid=1, camera=0)
    cache = tmp_path / "cache"
    assert build_crop_cache([sample], cache) == 1
    old_key = crop_cache_path(cache, sample)
    Image.new("RGB", (20, 20), (0, 0, 200)).save(image_path)  # a new world, same path and box
    os.utime(image_path, ns=(0, old_key.stat().st_mtime_ns + 10**9))
    assert crop_cache_path(cache, sample) != old_key
    assert build_crop_cache([sample], cache) == 1
    dataset = CropImageDataset([sample], CropTransform(16, 8), cache_dir=cache)
    assert np.asarray(dataset.load(0))[4, 4].tolist() == [0, 0, 200]


def test_detections_and_results_files_share_one_reader(tmp_path):
    from personsearch.evaluation.results_file import load_results, read_npz

    path = tmp_path / "det.npz"
    np.savez_compressed(
        path,
        image_names=np.array(["x.jpg"]),
        det_image=np.zeros(300, int),
        det_boxes=np.ones((300, 4)),
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for read, what in ((load_detections, "detections file"), (load_results, "results file")):
        with pytest.raises(ResultsError, match=f"cannot read {what} .*not a readable .npz"):
            read(path)
        with pytest.raises(ResultsError, match=f"{what} not found"):
            read(tmp_path / "absent.npz")
    np.savez(
        path,
        image_names=np.array(["x.jpg"], dtype=object),
        det_image=[0],
        det_boxes=np.ones((1, 4)),
    )
    with pytest.raises(ResultsError, match="'image_names' holds Python objects"):
        load_detections(path)
    np.savez(path, a=np.arange(3), b=np.array(["s"]))
    assert sorted(read_npz(path)) == ["a", "b"]
