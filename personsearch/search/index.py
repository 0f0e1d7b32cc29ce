"""The gallery index: person boxes of scene images and their features, on disk, crash-safe.

`GalleryIndex` owns the gallery store of an index folder (`index.store`, a
`personsearch.search.store.GalleryStore`: the SQLite database, the feature shards, the write
lock, the indexing journal; the folder layout is in `personsearch.search.store.schema`) and adds
search on top, through the FAISS index derived from the shards
(`personsearch.search.faiss_backends`: the kinds "flat", "hnsw", "ivf", "ivfpq", and their cache).
FAISS ranks the rows, the store says which boxes they are. Everything else (counts, records,
adding batches) is asked of `index.store`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from personsearch.search.faiss_backends import FaissCache, search_params
from personsearch.search.index_kinds import INDEX_KINDS, IndexKind
from personsearch.search.store.gallery import GalleryStore
from personsearch.search.store.journal import InterruptedImage
from personsearch.search.store.records import GalleryIndexError, ImageRecord, IndexedImage
from personsearch.search.store.schema import CACHE_DIR
from personsearch.search.tracking import one_hit_per_track

__all__ = [
    "INDEX_KINDS",
    "GalleryIndex",
    "GalleryIndexError",
    "ImageRecord",
    "IndexKind",
    "IndexedImage",
    "InterruptedImage",
    "SearchHit",
]


@dataclass(frozen=True)
class SearchHit:
    """One ranked result: a person box in a gallery image, or in a frame of a gallery video.

    For a video, `image_path` is the video file, `frame` and `time_s` say where in it the box
    is, and `track` names the person's track within the video; in a search with one hit per
    track (the default), the hit is the track's best-matching frame and `track_start_s`,
    `track_end_s`, `track_frames` say when the track is in view. All are None for a still image.
    """

    image_path: str
    box: tuple[float, float, float, float]  #: x1 y1 x2 y2 in pixels
    det_score: float
    similarity: float  #: inner product of L2-normalised features (cosine)
    camera: int  #: -1 where unknown
    row: int  #: the feature row / boxes.id in the index
    frame: int | None = None  #: videos: the frame number
    time_s: float | None = None  #: videos: seconds from the start
    track: int | None = None  #: videos: the track id within the video (-1: in no track)
    track_start_s: float | None = None  #: videos, one hit per track: the track's first time
    track_end_s: float | None = None  #: ... its last time
    track_frames: int | None = None  #: ... its sampled frames

    @property
    def is_video(self) -> bool:
        return self.frame is not None


class GalleryIndex:
    """A gallery of person boxes with features: a `GalleryStore` (`store`) searched through FAISS.

    Open with `GalleryIndex.open` (search only) or `GalleryIndex.open_for_writing` (create or add).
    """

    def __init__(self, store: GalleryStore) -> None:
        self.store = store
        self.folder = store.folder
        self._faiss = FaissCache(store.folder / CACHE_DIR, label=str(store.folder))
        # (num_boxes, store.track_keys() or None when no row is in a track), read once per size
        self._track_keys: tuple[int, np.ndarray | None] | None = None

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, folder: str | os.PathLike[str], *, fingerprint: str | None = None
    ) -> GalleryIndex:
        """Open an existing index for searching; refuse it if `fingerprint` differs from its model.

        Opened read-only, the FAISS index is built in memory if its cache is missing or stale
        (the writer caches it: `index` ends with prepare()).
        """
        return cls(GalleryStore.open(folder, fingerprint=fingerprint))

    @classmethod
    def open_for_writing(
        cls,
        folder: str | os.PathLike[str],
        *,
        fingerprint: str,
        dim: int,
        index_kind: str | None = None,
        info: Mapping[str, str] | None = None,
    ) -> GalleryIndex:
        """Create the index, or open an existing one to add images (one writer at a time).

        `info` is extra metadata stored at creation (e.g. the detector, the run folder). On an
        existing index, `index_kind` (if given) replaces the stored kind: the FAISS index is
        derived data and is rebuilt.
        """
        if index_kind is not None and index_kind not in INDEX_KINDS:
            raise GalleryIndexError(f"unknown index kind {index_kind!r}: use one of {INDEX_KINDS}")
        store = GalleryStore.open_for_writing(
            folder, fingerprint=fingerprint, dim=dim, index_kind=index_kind, info=info
        )
        try:
            index = cls(store)
            index._faiss.delete_temporaries()
            return index
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Close the database and release the write lock."""
        self.store.close()

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- searching -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Build (or load) the FAISS index now and cache it, so the first search is fast."""
        self._faiss_index()

    def adopt_faiss_index(self, index: Any) -> None:
        """Make a FAISS index built elsewhere (e.g. merged from shards) this index's cached one.

        It must be of this index's kind and hold exactly its rows, in row order (FAISS id = row);
        searches then use it as if it had been built here.
        """
        store = self.store
        self._faiss.adopt(index, store.index_kind, store.num_boxes, store.dim)

    def search(
        self,
        queries: np.ndarray,
        top_k: int = 10,
        *,
        cameras: Iterable[int] | None = None,
        exclude_paths: Iterable[str] | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        per_track: bool = True,
    ) -> list[list[SearchHit]]:
        """Rank gallery boxes for each query (Q x dim, L2-normalised): best first, top_k each.

        `cameras` keeps only boxes from those cameras; `exclude_paths` drops boxes of those
        images (e.g. the probe's own image). `ef_search` (HNSW) and `nprobe` (IVF) trade speed
        for recall. `per_track` (the default) returns one hit per video track, its best frame,
        instead of a hit for every sampled frame of the same person (no effect on still
        images): top_k then counts tracks.
        """
        store = self.store
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != store.dim:
            raise GalleryIndexError(
                f"queries must be Q x {store.dim} features for this index, got {queries.shape}"
            )
        if not np.isfinite(queries).all():
            raise GalleryIndexError("query features contain NaN or infinite values")
        allowed = store.allowed_rows(cameras, exclude_paths)
        candidates = store.num_boxes if allowed is None else len(allowed)
        k = min(int(top_k), candidates)
        if k <= 0:
            return [[] for _ in range(len(queries))]
        index = self._faiss_index()
        keys = self._keys_of_tracks() if per_track else None
        ranked: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
        todo, depth = np.arange(len(queries)), k
        while len(todo):
            # With tracks, a deeper ranking is collapsed to one row per track, deepened until
            # it holds top_k tracks or every candidate (so the result is exact on a flat index).
            if keys is not None:
                depth = min(candidates, max(depth, 4 * k))
            params = search_params(index, allowed, depth, ef_search, nprobe)
            similarities, rows = index.search(queries[todo], depth, params=params)
            self._check_search_output(similarities, rows, exact=store.index_kind == "flat")
            unfinished = []
            for query, sims, ids in zip(todo, similarities, rows, strict=True):
                found = ids >= 0
                sims, ids = sims[found], ids[found]
                if keys is not None:
                    best = one_hit_per_track(sims, keys[ids])
                    if len(best) < k and depth < candidates and len(ids) == depth:
                        unfinished.append(query)
                        continue
                    sims, ids = sims[best], ids[best]
                ranked[query] = list(zip(sims[:k].tolist(), ids[:k].tolist(), strict=True))
            todo, depth = np.asarray(unfinished, dtype=np.int64), depth * 4
        return self._hits(ranked, spans=keys is not None)

    def _hits(self, ranked: list[list[tuple[float, int]]], spans: bool) -> list[list[SearchHit]]:
        """SearchHits of (similarity, row) rankings; with `spans`, video hits carry their
        track's start and end."""
        store = self.store
        metadata = store.box_metadata([row for ranking in ranked for _, row in ranking])
        tracks = {
            (m["image_id"], m["track"])
            for m in metadata.values()
            if m["track"] is not None and m["track"] >= 0
        }
        found = store.track_spans(tracks) if spans else {}
        hits = []
        for ranking in ranked:
            own = []
            for similarity, row in ranking:
                meta = dict(metadata[row])
                span = found.get((meta.pop("image_id"), meta["track"]))
                extra = {}
                if span is not None:
                    extra = {
                        "track_start_s": span.start_s,
                        "track_end_s": span.end_s,
                        "track_frames": span.frames,
                    }
                own.append(SearchHit(**meta, **extra, similarity=float(similarity), row=row))
            hits.append(own)
        return hits

    def _keys_of_tracks(self) -> np.ndarray | None:
        """Per row, its track's key (see GalleryStore.track_keys); None when no row is in a
        track (still images only: nothing to collapse)."""
        rows = self.store.num_boxes
        if self._track_keys is None or self._track_keys[0] != rows:
            keys = self.store.track_keys()
            # the every-search check is done once per index size, not on each search
            tracked = not np.array_equal(keys, np.arange(len(keys)))
            self._track_keys = (rows, keys if tracked else None)
        return self._track_keys[1]

    def search_one(self, query: np.ndarray, top_k: int = 10, **filters: Any) -> list[SearchHit]:
        """`search` for a single feature vector."""
        return self.search(np.asarray(query, dtype=np.float32).reshape(1, -1), top_k, **filters)[0]

    def _faiss_index(self) -> Any:
        # Opened read-only: nothing is written, the FAISS index stays in memory.
        store = self.store
        return self._faiss.get(
            store.index_kind, store.num_boxes, store.dim, store.vectors, persist=store.writable
        )

    def _check_search_output(self, similarities: np.ndarray, rows: np.ndarray, exact: bool) -> None:
        """Refuse results that only non-finite features can explain, naming the damage.

        FAISS ranks a row holding inf above everything and silently leaves out a row holding
        NaN: an exact search returning fewer than k rows, or any non-finite similarity, means
        the FAISS index holds such rows. The shards are checked first (a damaged shard is named);
        if they are intact, the cached FAISS index itself is damaged.
        """
        returned = rows >= 0
        short = exact and not returned.all()
        if not short and np.isfinite(similarities[returned]).all():
            return
        store = self.store
        store.vectors()  # raises GalleryIndexError naming a shard with non-finite rows
        raise GalleryIndexError(
            f"gallery index {self.folder} is damaged: its cached FAISS index ({CACHE_DIR}/"
            f"{store.index_kind}-{store.num_boxes}.faiss) holds NaN or infinite features that its "
            f"shards do not; delete {CACHE_DIR}/ to rebuild it"
        )
