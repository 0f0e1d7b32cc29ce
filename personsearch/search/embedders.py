"""The re-id side of the searcher: the `Embedder` protocol and dependency-free embedders.

`Embedder` turns person crops into L2-normalised feature vectors; with `Detector`
(personsearch.search.detectors), which finds the persons, it is all the gallery index and the
searcher speak, so any re-id model plugs in by providing it. The trained re-id net and the
ImageNet stand-in are in personsearch.search.torch_embedders, ONNX models in
personsearch.search.onnx_embedder; `personsearch.search.pipeline.load_pipeline` is where a run
folder becomes a (detector, embedder) pair.

The embedders here need nothing beyond numpy and Pillow:
- `ColorHistogramEmbedder`: HSV colour histograms over horizontal stripes. A WEAK baseline: it
  matches clothing colours, not identities; use it to try the tools, not to measure anything.
- `BandColourEmbedder`: the mean colours of 12 bands down the body (what a benchmark must beat).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from personsearch.errors import PersonSearchError


@runtime_checkable
class Embedder(Protocol):
    """Turns person crops into comparable feature vectors."""

    #: length of one feature vector
    dim: int
    #: identifies the model and its weights; features of different fingerprints never mix
    fingerprint: str

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """N crops (H x W x 3 uint8, any size: the embedder resizes) -> N x dim float32, L2-normed."""
        ...


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def embed_checked(embedder: Embedder, crops: Sequence[np.ndarray]) -> np.ndarray:
    """The embedder's features of `crops`, checked (one finite row of `dim` per crop) and
    L2-normalised: inner product ranks correctly only on unit vectors."""
    if not len(crops):
        return np.zeros((0, embedder.dim), dtype=np.float32)
    features = np.asarray(embedder.embed_crops(list(crops)), dtype=np.float32)
    if features.shape != (len(crops), embedder.dim):
        raise PersonSearchError(
            f"embedder {embedder.fingerprint!r} returned features of shape "
            f"{features.shape} for {len(crops)} crops; expected ({len(crops)}, {embedder.dim})"
        )
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():  # a NaN row would rank nowhere (FAISS drops it) or everywhere (inf)
        raise PersonSearchError(
            f"embedder {embedder.fingerprint!r} returned NaN or infinite features for "
            f"{int(bad.sum())} of {len(crops)} crops: the model is broken"
        )
    return l2_normalize(features)


def _checked_crop(crop: np.ndarray) -> np.ndarray:
    """`crop` as an array, or ValueError unless it is a non-empty H x W x 3 image."""
    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"a crop must be a non-empty H x W x 3 array, got shape {crop.shape}")
    return crop


class _PerCropEmbedder:
    """An embedder that describes each crop on its own (`_embed_one`), then L2-normalises."""

    dim: int

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.stack([self._embed_one(crop) for crop in crops]))

    def _embed_one(self, crop: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ColorHistogramEmbedder(_PerCropEmbedder):
    """Weak, dependency-free baseline embedder: HSV colour histograms over horizontal stripes.

    Each crop is resized to `size` (width, height), split into `stripes` horizontal bands (head,
    torso, legs, ...), and each band gets a joint hue x saturation x value histogram. Square roots
    of the normalised histograms (Hellinger kernel) are concatenated and L2-normalised, so the
    inner product of two features is a colour-layout similarity in [0, 1]. It recognises clothing
    colours, not people: a baseline that makes the tools work out of the box, nothing more.
    """

    fingerprint = "color-hist-v1"

    def __init__(self) -> None:
        # Fixed parameters: they are part of what "color-hist-v1" means.
        self.size = (64, 128)
        self.stripes = 8
        self.bins = (8, 3, 3)  # hue, saturation, value
        self.dim = self.stripes * int(np.prod(self.bins))

    def _embed_one(self, crop: np.ndarray) -> np.ndarray:
        crop = _checked_crop(crop)
        image = Image.fromarray(crop.astype(np.uint8, copy=False), "RGB")
        hsv = np.asarray(image.resize(self.size, Image.Resampling.BILINEAR).convert("HSV"))
        h_bins, s_bins, v_bins = self.bins
        # Joint bin per pixel, then offset by the pixel's stripe: one bincount does all stripes.
        hsv = hsv.astype(np.int64)
        joint = (hsv[..., 0] * h_bins >> 8) * (s_bins * v_bins)
        joint += (hsv[..., 1] * s_bins >> 8) * v_bins + (hsv[..., 2] * v_bins >> 8)
        height = hsv.shape[0]
        stripe = (np.arange(height) * self.stripes // height)[:, None]
        per_stripe = h_bins * s_bins * v_bins
        counts = np.bincount((stripe * per_stripe + joint).ravel(), minlength=self.dim)
        counts = counts.reshape(self.stripes, per_stripe).astype(np.float32)
        counts /= np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        return np.sqrt(counts).ravel()


class BandColourEmbedder(_PerCropEmbedder):
    """Trivial no-learning descriptor: the mean colour of 12 bands down the body's centre line.

    Exactly, for an H x W x 3 uint8 crop (no resizing):
    - the centre line is the columns W // 3 .. W - W // 3 (the central third, at least one);
    - band b (0..11, top to bottom) is the rows b * H // 12 .. max((b + 1) * H // 12, that + 1),
      so for H >= 12 the bands split the rows and smaller crops repeat rows;
    - per band, m_b = the mean R, G, B (0..255) of its centre-line pixels, and the feature is
      log(1 + m_b) - log(1 + 128) (natural log; subtracting a mid-grey makes cosine similarity
      compare colours rather than all pointing the same way);
    - the 12 x 3 = 36 numbers (band-major, RGB within a band) are L2-normalised (a crop that is
      exactly mid-grey everywhere stays all zero).
    It is what a benchmark must defeat: if it scores well, identity is in the clothing colours.
    """

    fingerprint = "band-colour-v1"
    BANDS = 12
    #: log(1 + 128): the mid-grey subtracted before normalising
    CENTRE = float(np.log1p(128.0))

    def __init__(self) -> None:
        self.dim = self.BANDS * 3

    def _embed_one(self, crop: np.ndarray) -> np.ndarray:
        crop = _checked_crop(crop)
        height, width = crop.shape[:2]
        left = width // 3
        centre = crop[:, left : max(width - left, left + 1)].astype(np.float64)
        means = np.empty((self.BANDS, 3))
        for band in range(self.BANDS):
            top = band * height // self.BANDS
            bottom = max((band + 1) * height // self.BANDS, top + 1)
            means[band] = centre[top:bottom].reshape(-1, 3).mean(axis=0)
        return (np.log1p(means) - self.CENTRE).ravel().astype(np.float32)
