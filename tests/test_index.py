"""The gallery index: storage, crash safety, model checks, FAISS kinds, filters."""

from __future__ import annotations

import numpy as np
import pytest

from personsearch.errors import PersonSearchError
from personsearch.search.index import GalleryIndex, GalleryIndexError, ImageRecord
from personsearch.search.store import writer as store_writer
from personsearch.search.store.schema import CACHE_DIR, SHARD_DIR

DIM = 16


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def record(name: str, n_boxes: int, camera: int = -1) -> ImageRecord:
    boxes = np.array([[i, i, i + 10, i + 20] for i in range(n_boxes)], dtype=np.float32)
    return ImageRecord(
        path=f"/gallery/{name}",
        sha1="0" * 40,
        size=100,
        mtime=1.0,
        width=64,
        height=64,
        camera=camera,
        boxes=boxes,
        scores=np.linspace(0.5, 1, n_boxes, dtype=np.float32),
    )


def fill(
    index: GalleryIndex, rng: np.random.Generator, images: int, boxes_each: int = 3, start: int = 0
) -> np.ndarray:
    """Add `images` images (one batch each); return their features."""
    feats = []
    for i in range(start, start + images):
        f = unit_rows(rng, boxes_each)
        index.store.add_batch([record(f"img{i:04d}.jpg", boxes_each, camera=i % 3)], f)
        feats.append(f)
    return np.concatenate(feats)


def test_rows_and_vectors_survive_reopening_and_flat_search_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    with GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="m", dim=DIM) as index:
        feats = fill(index, rng, images=5)
        # a batch with an image without persons and a failed image: no feature rows
        empty = ImageRecord("/gallery/empty.jpg", "1" * 40, 5, 1.0, 64, 64)
        failed = ImageRecord("/gallery/bad.jpg", None, 5, 1.0, error="cannot decode")
        index.store.add_batch([empty, failed], np.zeros((0, DIM), np.float32))
    index = GalleryIndex.open(tmp_path / "idx", fingerprint="m")
    assert index.store.num_boxes == 15 and index.store.num_images == 6
    assert index.store.failed_images() == [("/gallery/bad.jpg", "cannot decode")]
    np.testing.assert_array_equal(index.store.vectors(), feats)
    assert index.store.rows()[4] == ("/gallery/img0001.jpg", (1.0, 1.0, 11.0, 21.0), 0.75)

    queries = unit_rows(rng, 4)
    results = index.search(queries, top_k=5)
    expected = np.argsort(-(queries @ feats.T), axis=1)[:, :5]
    assert [[hit.row for hit in hits] for hits in results] == expected.tolist()
    hit = results[0][0]
    assert hit.similarity == pytest.approx(float(queries[0] @ feats[hit.row]), abs=1e-5)
    assert hit.image_path == f"/gallery/img{hit.row // 3:04d}.jpg"
    assert hit.camera == (hit.row // 3) % 3
    index.close()


def test_another_model_is_refused_with_a_clear_message(tmp_path):
    with GalleryIndex.open_for_writing(
        tmp_path / "idx", fingerprint="reid-a", dim=DIM, info={"run": "runs/a"}
    ):
        pass
    with pytest.raises(
        PersonSearchError, match=r"built by model 'reid-a' \(from runs/a\).*'reid-b'"
    ):
        GalleryIndex.open(tmp_path / "idx", fingerprint="reid-b")
    with pytest.raises(GalleryIndexError, match="'reid-a'.*'reid-b'"):
        GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="reid-b", dim=DIM)
    with pytest.raises(GalleryIndexError, match="16-d features but the model makes 8-d"):
        GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="reid-a", dim=8)


def test_missing_index_and_foreign_folder_are_refused(tmp_path):
    with pytest.raises(GalleryIndexError, match="no gallery index at .*index.sqlite not found"):
        GalleryIndex.open(tmp_path / "nowhere")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(GalleryIndexError, match="non-empty folder"):
        GalleryIndex.open_for_writing(tmp_path / "photos", fingerprint="m", dim=DIM)


def test_one_writer_at_a_time(tmp_path):
    with GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="m", dim=DIM):
        with pytest.raises(GalleryIndexError, match="being written by another process"):
            GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="m", dim=DIM)
        GalleryIndex.open(tmp_path / "idx").close()  # readers are welcome
    GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="m", dim=DIM).close()


def test_shards_of_uncommitted_batches_are_removed_and_ignored(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = tmp_path / "idx"
    with GalleryIndex.open_for_writing(folder, fingerprint="m", dim=DIM) as index:
        feats = fill(index, rng, images=2)

        # the transaction fails after the shard was written: no rows, no shard left behind
        def failing_insert(*args, **kwargs):
            raise RuntimeError("disk full")

        with monkeypatch.context() as patch, pytest.raises(RuntimeError):
            patch.setattr(store_writer, "_insert_boxes", failing_insert)
            index.store.add_batch([record("x.jpg", 2)], unit_rows(rng, 2))
        assert len(list((folder / SHARD_DIR).iterdir())) == 2
    # a writer killed between writing its shard and committing leaves an orphan (and temp files)
    orphan = folder / SHARD_DIR / "000000000006-000003.npy"
    np.save(orphan, unit_rows(rng, 3))
    (folder / SHARD_DIR / ".000000000009-000003.npy.abc.tmp.npy").write_bytes(b"half")
    reader = GalleryIndex.open(folder)
    np.testing.assert_array_equal(reader.store.vectors(), feats)  # readers ignore it
    reader.close()
    with GalleryIndex.open_for_writing(folder, fingerprint="m", dim=DIM) as index:
        assert not orphan.exists()
        assert len(list((folder / SHARD_DIR).iterdir())) == 2
        more = fill(index, rng, images=1, start=10)
        np.testing.assert_array_equal(index.store.vectors(), np.concatenate([feats, more]))


def test_bad_features_and_reindexing_an_image_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    with GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="m", dim=DIM) as index:
        with pytest.raises(GalleryIndexError, match=r"expected 2 x 16 features"):
            index.store.add_batch([record("a.jpg", 2)], unit_rows(rng, 3))
        with pytest.raises(GalleryIndexError, match="NaN"):
            index.store.add_batch([record("a.jpg", 1)], np.full((1, DIM), np.nan, np.float32))
        index.store.add_batch([record("a.jpg", 1)], unit_rows(rng, 1))
        with pytest.raises(GalleryIndexError, match="already indexed"):
            index.store.add_batch([record("a.jpg", 1)], unit_rows(rng, 1))
        assert index.store.num_boxes == 1
        assert len(list((tmp_path / "idx" / SHARD_DIR).iterdir())) == 1


def test_failed_image_can_be_retried(tmp_path):
    rng = np.random.default_rng(3)
    with GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="m", dim=DIM) as index:
        bad = ImageRecord("/gallery/a.jpg", None, 1, 1.0, error="truncated")
        index.store.add_batch([bad], np.zeros((0, DIM), np.float32))
        index.store.add_batch([record("a.jpg", 2)], unit_rows(rng, 2))
        assert index.store.failed_images() == []
        assert index.store.known_images()["/gallery/a.jpg"].status == "ok"


def test_camera_filter_and_excluded_images(tmp_path):
    rng = np.random.default_rng(4)
    with GalleryIndex.open_for_writing(
        tmp_path / "idx", fingerprint="m", dim=DIM, index_kind="hnsw"
    ) as index:
        feats = fill(index, rng, images=9)
        query = feats[0]
        hits = index.search_one(query, top_k=100, cameras=[1, 2])
        assert len(hits) == 18 and {h.camera for h in hits} == {1, 2}
        hits = index.search_one(query, top_k=3, exclude_paths=["/gallery/img0000.jpg"])
        assert all(h.image_path != "/gallery/img0000.jpg" for h in hits)
        assert index.search_one(query, top_k=5, cameras=[7]) == []
        assert index.search_one(query, top_k=5, cameras=[]) == []
        assert index.search_one(query, top_k=1)[0].row == 0


def test_faiss_cache_is_written_extended_and_switched_by_kind(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "idx"
    with GalleryIndex.open_for_writing(
        folder, fingerprint="m", dim=DIM, index_kind="hnsw"
    ) as index:
        feats = fill(index, rng, images=4)
        index.prepare()
        assert [p.name for p in (folder / CACHE_DIR).iterdir()] == ["hnsw-12.faiss"]
        feats = np.concatenate([feats, fill(index, rng, images=2, start=4)])
        top = index.search_one(feats[14], top_k=1)[0]
        assert top.row == 14 and top.similarity == pytest.approx(1.0, abs=1e-5)
        assert [p.name for p in (folder / CACHE_DIR).iterdir()] == ["hnsw-18.faiss"]
    with GalleryIndex.open_for_writing(
        folder, fingerprint="m", dim=DIM, index_kind="flat"
    ) as index:
        assert index.store.index_kind == "flat"
        assert index.search_one(feats[3], top_k=1)[0].row == 3
    assert GalleryIndex.open(folder).store.meta["index_kind"] == "flat"
    assert sorted(p.name for p in (folder / CACHE_DIR).iterdir()) == [
        "flat-18.faiss",
        "hnsw-18.faiss",
    ]


def test_damaged_cache_is_rebuilt(tmp_path):
    rng = np.random.default_rng(6)
    with GalleryIndex.open_for_writing(tmp_path / "idx", fingerprint="m", dim=DIM) as index:
        feats = fill(index, rng, images=3)
        index.prepare()
    (tmp_path / "idx" / CACHE_DIR / "flat-9.faiss").write_bytes(b"garbage")
    index = GalleryIndex.open(tmp_path / "idx")
    assert index.search_one(feats[5], top_k=1)[0].row == 5
    index.close()


@pytest.mark.parametrize("kind, min_recall", [("hnsw", 0.9), ("ivf", 0.6), ("ivfpq", 0.5)])
def test_approximate_kinds_agree_with_exact_search(tmp_path, kind, min_recall):
    """Recall@10 of the approximate index against exact inner product on random vectors."""
    rng = np.random.default_rng(7)
    n, dim, k = 4000, 32, 10
    vectors = unit_rows(rng, n, dim)
    queries = unit_rows(rng, 50, dim)
    records = [record(f"img{i:05d}.jpg", 1) for i in range(n)]
    with GalleryIndex.open_for_writing(
        tmp_path / "idx", fingerprint="m", dim=dim, index_kind=kind
    ) as index:
        index.store.add_batch(records, vectors)
        approx = index.search(queries, top_k=k)
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
        recall = np.mean(
            [
                len({h.row for h in hits} & set(truth)) / k
                for hits, truth in zip(approx, exact, strict=True)
            ]
        )
        assert recall >= min_recall
        if kind == "ivf":  # probing every list is exact
            full = index.search(queries, top_k=k, nprobe=10_000)
            assert [[h.row for h in hits] for hits in full] == exact.tolist()
        if kind == "ivfpq":
            # On structureless vectors the 4-bit codes (16 bits each here) rank coarsely, so
            # probing every list does not help recall; the re-ranked similarities are exact.
            full = index.search(queries, top_k=k, nprobe=10_000)
            hit = full[0][0]
            assert hit.similarity == pytest.approx(float(queries[0] @ vectors[hit.row]), abs=1e-5)


def test_ivfpq_finds_planted_boxes_survives_reopening_and_grows_like_ivf(tmp_path):
    rng = np.random.default_rng(8)
    folder = tmp_path / "idx"
    with GalleryIndex.open_for_writing(
        folder, fingerprint="m", dim=DIM, index_kind="ivfpq"
    ) as index:
        feats = fill(index, rng, images=4)  # 12 rows: fewer than a 4-bit codebook's 16
        top = index.search_one(feats[7], top_k=3)
        assert top[0].row == 7 and top[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert [p.name for p in (folder / CACHE_DIR).iterdir()] == ["ivfpq-12.faiss"]
        feats = np.concatenate([feats, fill(index, rng, images=2, start=4)])
        assert index.search_one(feats[16], top_k=1)[0].row == 16  # extended: 12 -> 18 rows
        assert [p.name for p in (folder / CACHE_DIR).iterdir()] == ["ivfpq-18.faiss"]
        feats = np.concatenate([feats, fill(index, rng, images=200, start=6)])
        assert index.search_one(feats[500], top_k=1)[0].row == 500  # retrained: 18 -> 618
    reader = GalleryIndex.open(folder, fingerprint="m")
    assert reader.store.index_kind == "ivfpq"
    queries = feats[[3, 100, 617]] + 0.05 * unit_rows(rng, 3)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert [hits[0].row for hits in reader.search(queries, top_k=5)] == [3, 100, 617]
    reader.close()


def test_ivfpq_filters(tmp_path):
    rng = np.random.default_rng(9)
    with GalleryIndex.open_for_writing(
        tmp_path / "idx", fingerprint="m", dim=DIM, index_kind="ivfpq"
    ) as index:
        feats = fill(index, rng, images=30)
        query = feats[0]
        # like "ivf", only the probed lists are searched: probe them all to see every match
        hits = index.search_one(query, top_k=100, cameras=[1, 2], nprobe=1000)
        assert len(hits) == 60 and {h.camera for h in hits} == {1, 2}
        hits = index.search_one(query, top_k=3, exclude_paths=["/gallery/img0000.jpg"])
        assert len(hits) == 3 and all(h.image_path != "/gallery/img0000.jpg" for h in hits)
        assert index.search_one(query, top_k=5, cameras=[7]) == []
        assert index.search_one(query, top_k=1, cameras=[0])[0].row == 0


def test_ivfpq_code_size_follows_the_feature_size():
    import faiss

    from personsearch.search.faiss_backends import build_faiss_index, ivfpq_nlist

    rng = np.random.default_rng(10)
    for dim, sub_quantizers in [(64, 8), (20, 2), (7, 1)]:
        index = build_faiss_index(unit_rows(rng, 100, dim), "ivfpq")
        ivf = faiss.downcast_index(index.base_index)
        assert (ivf.pq.M, ivf.pq.nbits, ivf.nlist) == (sub_quantizers, 4, ivfpq_nlist(100))
        assert index.ntotal == 100
