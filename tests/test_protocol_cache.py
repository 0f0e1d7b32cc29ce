"""The parsed-protocol cache (personsearch.data.protocol_cache): identical protocols, reuse only
while the source files are byte for byte the same, and no harm when the cache is unusable."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
from cuhk_fixture import write_cuhk_sysu, write_real_testg100_root
from real_data import needs_real

import personsearch.data.cuhk_sysu as cuhk_sysu
from personsearch.data.cuhk_sysu import load_cuhk_sysu_protocol
from personsearch.data.protocol_cache import CACHE_ENV, protocol_arrays, protocol_from_arrays


def assert_same_protocol(a, b):
    assert (a.name, a.images, a.unlisted) == (b.name, b.images, b.unlisted)
    np.testing.assert_array_equal(a.image_cameras, b.image_cameras)
    assert len(a.queries) == len(b.queries)
    for qa, qb in zip(a.queries, b.queries, strict=True):
        assert (qa.image, qa.pid, qa.camera) == (qb.image, qb.pid, qb.camera)
        np.testing.assert_array_equal(qa.box, qb.box)
        np.testing.assert_array_equal(qa.gallery, qb.gallery)
        np.testing.assert_array_equal(qa.gt_boxes, qb.gt_boxes)  # NaN rows in the same places
        assert qb.gallery.dtype == np.int64 and qb.gt_boxes.dtype == np.float32


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder / "protocols"


@pytest.fixture
def cuhk(tmp_path):
    return write_cuhk_sysu(tmp_path / "cuhk", write_images=False).root


def parses_counted(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = cuhk_sysu.read_test_protocol

    def counting(path, key, index):
        calls.append(key)
        return original(path, key, index)

    monkeypatch.setattr(cuhk_sysu, "read_test_protocol", counting)
    return calls


@pytest.mark.parametrize("size", [50, 100, "full"])
def test_cached_protocol_equals_the_parsed_one_and_skips_parsing(cuhk, cache, monkeypatch, size):
    monkeypatch.setenv(CACHE_ENV, "off")
    parsed = load_cuhk_sysu_protocol(cuhk, size)
    monkeypatch.setenv(CACHE_ENV, str(cache.parent))
    calls = parses_counted(monkeypatch)
    first = load_cuhk_sysu_protocol(cuhk, size)
    second = load_cuhk_sysu_protocol(cuhk, size)
    assert len(calls) == 1 and len(list(cache.glob("*.npz"))) == 1
    assert_same_protocol(parsed, first)
    assert_same_protocol(parsed, second)


def test_full_and_testg50_are_separate_entries(cuhk, cache):
    full = load_cuhk_sysu_protocol(cuhk, "full")
    g50 = load_cuhk_sysu_protocol(cuhk, 50)
    assert (full.unlisted, g50.unlisted) == ("all", "none")
    assert load_cuhk_sysu_protocol(cuhk, "full").unlisted == "all"
    assert len(list(cache.glob("*.npz"))) == 2


def test_a_changed_protocol_or_pool_file_is_parsed_again(cuhk, cache, monkeypatch):
    calls = parses_counted(monkeypatch)
    before = load_cuhk_sysu_protocol(cuhk, 50)
    path = cuhk / "annotation" / "test" / "train_test" / "TestG50.mat"
    records = scipy.io.loadmat(path)["TestG50"]
    stat = os.stat(path)
    scipy.io.savemat(path, {"TestG50": records[:, :1]})  # one query fewer
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time: contents decide
    after = load_cuhk_sysu_protocol(cuhk, 50)
    assert len(calls) == 2 and len(after.queries) == 1 < len(before.queries)
    pool = cuhk / "annotation" / "pool.mat"
    names = scipy.io.loadmat(pool)["pool"]
    scipy.io.savemat(pool, {"pool": names[::-1]})
    reordered = load_cuhk_sysu_protocol(cuhk, 50)
    assert len(calls) == 3 and reordered.images == after.images[::-1]


def test_a_copied_dataset_reuses_the_entry(cuhk, cache, monkeypatch, tmp_path):
    import shutil

    calls = parses_counted(monkeypatch)
    original = load_cuhk_sysu_protocol(cuhk, 100)
    copy = shutil.copytree(cuhk, tmp_path / "copy")
    assert_same_protocol(original, load_cuhk_sysu_protocol(copy, 100))
    assert len(calls) == 1


def test_an_unreadable_entry_is_parsed_again_and_replaced(cuhk, cache, monkeypatch):
    load_cuhk_sysu_protocol(cuhk, 50)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    calls = parses_counted(monkeypatch)
    protocol = load_cuhk_sysu_protocol(cuhk, 50)
    assert calls == ["TestG50"] and len(protocol.queries) > 0
    assert_same_protocol(protocol, protocol_from_arrays(entry))  # rewritten whole
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temporary file left


def test_an_unwritable_cache_only_costs_a_note(cuhk, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    protocol = load_cuhk_sysu_protocol(cuhk, 50)
    assert len(protocol.queries) > 0
    assert "could not cache the parsed protocol" in capsys.readouterr().err


def test_cache_off_writes_nothing(cuhk, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    load_cuhk_sysu_protocol(cuhk, 50)
    assert not (tmp_path / "home").exists()


def test_missing_files_still_raise_the_readers_error(tmp_path, cache):
    from personsearch.errors import DatasetError

    root = write_cuhk_sysu(tmp_path / "cuhk", write_images=False).root
    (root / "annotation" / "pool.mat").unlink()
    with pytest.raises(DatasetError, match="pool.mat"):
        load_cuhk_sysu_protocol(root, 50)
    assert not cache.exists() or not list(cache.glob("*.npz"))


@needs_real("cuhk-sysu-protocol/TestG100.mat")
def test_real_testg100_round_trips(tmp_path, cache, monkeypatch):
    """The released file's quirks (images listed twice, a query's own image listed) survive."""
    root = write_real_testg100_root(tmp_path / "real")
    monkeypatch.setenv(CACHE_ENV, "off")
    parsed = load_cuhk_sysu_protocol(root, 100)
    monkeypatch.setenv(CACHE_ENV, str(cache.parent))
    load_cuhk_sysu_protocol(root, 100)
    cached = load_cuhk_sysu_protocol(root, 100)
    assert_same_protocol(parsed, cached)
    arrays = protocol_arrays(parsed)
    assert arrays["gallery"].dtype == np.int32 and len(arrays["gallery"]) == 290_000
    assert len(arrays["held_entry"]) == sum(int(q.holds_person.sum()) for q in parsed.queries)


def test_a_slow_first_parse_is_announced(cuhk, cache, monkeypatch, capsys):
    import personsearch.data.protocol_cache as protocol_cache

    load_cuhk_sysu_protocol(cuhk, 50)  # small: parsed silently
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(protocol_cache, "_PARSE_BYTES_PER_S", 10.0)  # as if it were huge
    load_cuhk_sysu_protocol(cuhk, 100)
    err = capsys.readouterr().err
    assert "reading cuhk-sysu/TestG100" in err and "then cached in" in err
    load_cuhk_sysu_protocol(cuhk, 100)  # from the cache: nothing to announce
    assert capsys.readouterr().err == ""


def test_cache_protocols_parses_the_missing_ones_in_parallel_processes(cuhk, cache, monkeypatch):
    from personsearch.data.cuhk_sysu import cache_protocols

    load_cuhk_sysu_protocol(cuhk, 50)  # cached already: not parsed again
    before = {p.name for p in cache.glob("*.npz")}
    calls = parses_counted(monkeypatch)  # counts this process's parses only
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    cache_protocols(cuhk, [50, 100, "full"])
    assert calls == []  # the two missing ones were parsed in worker processes
    assert len({p.name for p in cache.glob("*.npz")} - before) == 2
    monkeypatch.setenv(CACHE_ENV, "off")
    for size in (100, "full"):
        parsed = load_cuhk_sysu_protocol(cuhk, size)
        monkeypatch.setenv(CACHE_ENV, str(cache.parent))
        assert_same_protocol(parsed, load_cuhk_sysu_protocol(cuhk, size))
        monkeypatch.setenv(CACHE_ENV, "off")
    assert calls == ["TestG100", "TestG50"]  # only the cache-off loads parsed here


def test_cache_protocols_reports_a_broken_file(cuhk, cache):
    from personsearch.data.cuhk_sysu import cache_protocols
    from personsearch.errors import DatasetError

    (cuhk / "annotation" / "test" / "train_test" / "TestG100.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="TestG100.mat"):
        cache_protocols(cuhk, [50, 100])
