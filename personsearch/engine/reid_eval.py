"""Re-id evaluation on crops (Market-1501 protocol): embed queries and gallery, rank, score.

Every rank embeds its shard of the crops (indices rank, rank + W, ...), the shards are gathered
and put back in dataset order, so each crop is counted exactly once whatever the world size.
The scoring itself is the pure function in `personsearch.evaluation.reid`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from personsearch.data.crops import CropImageDataset
from personsearch.data.samplers import ShardSampler
from personsearch.engine.distributed import DistInfo, all_gather_arrays


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
    from personsearch.evaluation.reid import evaluate_reid

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
