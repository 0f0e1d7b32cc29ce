"""The FAISS vector backends of a gallery index: the kinds, and how each is built, extended,
searched and cached.

Kinds: "flat" (exact inner product, the default), "hnsw", "ivf" and "ivfpq" (approximate, for
large galleries; "ivfpq" scans compressed codes and re-ranks its candidates exactly, the fast one
at a million boxes). Features are L2-normalised, so inner product is cosine similarity.

The FAISS index is derived from the store's shards (`personsearch.search.store`): built on first
search, cached to disk atomically under a name that says how many rows it covers
(`faiss/<kind>-<rows>.faiss`), and extended (not rebuilt) when rows were added. FAISS id = row.

faiss is imported inside the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.io import atomic_path
from personsearch.search.index_kinds import INDEX_KINDS
from personsearch.search.store.records import GalleryIndexError

HNSW_NEIGHBORS = 32  # graph degree M: recall vs memory
HNSW_EF_CONSTRUCTION = 80

# "ivfpq": 4-bit PQ codes (one byte per IVFPQ_SUBVECTOR_DIMS * 2 dims, scanned in SIMD
# registers) find candidates; the best top_k * IVFPQ_K_FACTOR are re-ranked with the exact
# vectors. Defaults measured with benchmarks/bench_index.py (docs/benchmarks.md).
IVFPQ_SUBVECTOR_DIMS = 8
IVFPQ_K_FACTOR = 16
IVFPQ_PROBE_FRACTION = 0.5  # default nprobe = this share of the lists

_CACHE_NAME = re.compile(r"^(?P<kind>[a-z]+)-(?P<rows>\d+)\.faiss$")


# ---- building ----------------------------------------------------------------------------


def build_faiss_index(vectors: np.ndarray, kind: str) -> Any:
    """A FAISS inner-product index of `kind` ("flat", "hnsw", "ivf", "ivfpq") holding `vectors`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    index = empty_faiss_index(kind, dim, n)
    if kind == "ivf" and n:
        rows = ivf_training_rows(n, index.nlist)
        index.train(vectors if rows is None else vectors[rows])
    if kind == "ivfpq" and n:
        rows = ivf_training_rows(n, ivfpq_nlist(n))
        index.train(ivfpq_training_set(vectors if rows is None else vectors[rows]))
    if n:
        index.add(vectors)
    return index


def empty_faiss_index(kind: str, dim: int, n: int) -> Any:
    """The empty (untrained) FAISS inner-product index of `kind` for a gallery of `n` rows."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBORS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index
    if kind == "ivf":
        # ~4 sqrt(N) lists, and at least 39 training points per list (FAISS's own minimum).
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":
        spec = f"IVF{ivfpq_nlist(n)},PQ{_pq_subquantizers(dim)}x4fs,RFlat"
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        index.k_factor = IVFPQ_K_FACTOR
        ivf = faiss.downcast_index(index.base_index)
        # Small galleries train on fewer points than FAISS asks for (39 per centroid): fine
        # here, since the candidates are re-ranked exactly; keep its warnings off the console.
        ivf.cp.min_points_per_centroid = 1
        ivf.pq.cp.min_points_per_centroid = 1
        return index
    raise GalleryIndexError(f"unknown index kind {kind!r}: use one of {INDEX_KINDS}")


def ivfpq_nlist(n: int) -> int:
    """IVF lists of an "ivfpq" index over `n` rows: ~2 sqrt(N), at least 39 rows each.

    Fewer lists than "ivf" (4 sqrt(N)): scanning codes is cheap, so a query probes a large
    share of the lists, and fewer centroids make that share cheaper to pick.
    """
    return max(1, min(int(2 * np.sqrt(n)), n // 39))


def ivfpq_training_set(sample: np.ndarray) -> np.ndarray:
    """`sample`, repeated up to the 16 rows a 4-bit PQ codebook needs (tiny galleries)."""
    if len(sample) >= 16:
        return sample
    return np.resize(sample, (16, sample.shape[1]))


def _pq_subquantizers(dim: int) -> int:
    """PQ sub-quantizers of about IVFPQ_SUBVECTOR_DIMS dims each that split `dim` exactly."""
    for sub_dims in range(min(IVFPQ_SUBVECTOR_DIMS, dim), dim + 1):
        if dim % sub_dims == 0:
            return dim // sub_dims
    return 1


def ivf_training_rows(n: int, nlist: int) -> np.ndarray | None:
    """The rows an IVF index of `nlist` lists over `n` rows trains on (None: all of them).

    k-means on a seeded sample (~64 points per list) instead of every vector: the lists are as
    good and training at 1M boxes takes minutes instead of an hour.
    """
    if n <= 64 * nlist:
        return None
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, 64 * nlist, replace=False))


def can_extend(kind: str, cached_rows: int, rows: int) -> bool:
    """Whether a `kind` index over the first `cached_rows` rows may be grown to `rows` by adding."""
    # Flat and HNSW grow exactly; an IVF's lists were trained on a sample that must stay
    # representative, so it is retrained once the gallery has more than doubled.
    if cached_rows == 0:
        return False
    return kind not in ("ivf", "ivfpq") or 2 * cached_rows >= rows


# ---- searching ---------------------------------------------------------------------------


def ivfpq_search_params(
    index: Any, nprobe: int | None = None, k_factor: int = IVFPQ_K_FACTOR
) -> tuple[Any, Any]:
    """Search parameters of an "ivfpq" index, and the IVF part's (where a selector goes).

    `nprobe` defaults to IVFPQ_PROBE_FRACTION of the lists; the best k * `k_factor` candidates
    of the compressed scan are re-ranked with the exact vectors.
    """
    import faiss

    nlist = faiss.extract_index_ivf(index).nlist
    base = faiss.SearchParametersIVF(nprobe=nprobe or max(1, round(IVFPQ_PROBE_FRACTION * nlist)))
    params = faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)
    params._base = base  # the C++ parameters point at it: keep it alive with them
    return params, base


def search_params(
    index: Any, allowed: np.ndarray | None, k: int, ef: int | None, nprobe: int | None
) -> Any:
    """Search parameters for `index`: only the `allowed` ids (None: all); `ef_search` (HNSW)
    and `nprobe` (IVF) default to values that suit top-`k` searches."""
    import faiss

    selector = None if allowed is None else faiss.IDSelectorBatch(allowed)
    filtered = None  # the parameters the selector goes to, when not `params` itself
    if isinstance(index, faiss.IndexRefine):  # "ivfpq"
        params, filtered = ivfpq_search_params(index, nprobe)
    elif isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=ef or max(64, 2 * k))
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=nprobe or min(index.nlist, 16))
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        target = params if filtered is None else filtered
        target.sel = selector
        target._selector = selector  # keep the selector alive as long as the parameters
    return params


# ---- the cache ---------------------------------------------------------------------------


class FaissCache:
    """The FAISS index of a gallery index folder, kept in memory and cached in `cache_dir`.

    `label` names the gallery index in errors.
    """

    def __init__(self, cache_dir: Path, label: str) -> None:
        self.cache_dir = cache_dir
        self.label = label
        self._index: Any | None = None
        self._rows = -1
        self._kind = ""

    def get(
        self, kind: str, rows: int, dim: int, vectors: Callable[[], np.ndarray], persist: bool
    ) -> Any:
        """The `kind` index over the first `rows` feature rows: from memory, from the disk
        cache (extended where it covers fewer rows), or built from `vectors()`. `persist`: write
        what was built or extended to the disk cache (False for an index opened read-only)."""
        if self._index is not None and (self._rows, self._kind) == (rows, kind):
            return self._index
        cached_rows, index = self._load(kind, rows, dim)
        if index is None or cached_rows < rows:
            all_vectors = vectors()
            if index is not None and can_extend(kind, cached_rows, rows):
                index.add(np.ascontiguousarray(all_vectors[cached_rows:]))
            else:
                index = build_faiss_index(all_vectors, kind)
            if persist:
                self._write(index, kind, rows)
        self._index, self._rows, self._kind = index, rows, kind
        return index

    def adopt(self, index: Any, kind: str, rows: int, dim: int) -> None:
        """Make a FAISS index built elsewhere the cached one: it must be an inner-product index
        of `kind` holding exactly `rows` `dim`-d vectors, in row order."""
        import faiss

        expected = {
            "flat": faiss.IndexFlat,
            "hnsw": faiss.IndexHNSW,
            "ivf": faiss.IndexIVF,
            "ivfpq": faiss.IndexRefine,
        }[kind]
        if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise GalleryIndexError(
                f"gallery index {self.label} is a {kind!r} inner-product index; cannot adopt a "
                f"{type(index).__name__} (metric {index.metric_type})"
            )
        if index.ntotal != rows or index.d != dim:
            raise GalleryIndexError(
                f"gallery index {self.label} has {rows} rows of {dim}-d features; cannot "
                f"adopt a FAISS index of {index.ntotal} {index.d}-d vectors"
            )
        self._write(index, kind, rows)
        self._index, self._rows, self._kind = index, rows, kind

    def delete_temporaries(self) -> None:
        """Remove files that are not caches (temporaries of killed writers)."""
        if self.cache_dir.is_dir():
            for path in self.cache_dir.iterdir():
                if not _CACHE_NAME.match(path.name):
                    path.unlink(missing_ok=True)

    def _write(self, index: Any, kind: str, rows: int) -> None:
        import faiss

        with atomic_path(self.cache_dir / f"{kind}-{rows}.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        for old in self.cache_dir.glob(f"{kind}-*.faiss"):  # superseded caches
            if old.name != f"{kind}-{rows}.faiss":
                old.unlink(missing_ok=True)

    def _load(self, kind: str, rows: int, dim: int) -> tuple[int, Any | None]:
        """The cached index of this kind covering the most rows (<= rows), if readable."""
        import faiss

        candidates = []
        for path in self.cache_dir.glob(f"{kind}-*.faiss"):
            match = _CACHE_NAME.match(path.name)
            if match and match["kind"] == kind and int(match["rows"]) <= rows:
                candidates.append((int(match["rows"]), path))
        for cached_rows, path in sorted(candidates, reverse=True):
            try:
                index = faiss.read_index(str(path))
            except RuntimeError:  # damaged or being replaced: it is only a cache
                continue
            if index.ntotal == cached_rows and index.d == dim:
                return cached_rows, index
        return 0, None
