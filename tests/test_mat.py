"""The MATLAB helpers: every wrapping scipy produces unwraps the same; bad files name themselves."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from personsearch.data.mat import (
    as_matrix,
    as_numbers,
    as_record,
    as_records,
    as_string,
    as_strings,
    get_field,
    load_mat,
    mat_variable,
    require_file,
)
from personsearch.errors import DatasetError


def _structs(shape, names):
    array = np.empty(shape, dtype=[("imname", object), ("idlocate", object)])
    for i, name in enumerate(names):
        array.reshape(-1)["imname"][i] = name
        array.reshape(-1)["idlocate"][i] = np.array([[i, 2, 3, 4]], dtype=np.uint8)
    return array


def test_missing_truncated_garbage_and_v73_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match="not found: .*absent.mat"):
        load_mat(tmp_path / "absent.mat")
    good = tmp_path / "good.mat"
    scipy.io.savemat(good, {"pool": np.arange(1000.0)})
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"truncated\.mat \(truncated or not a \.mat file\?\)"):
        load_mat(truncated)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"this is not matlab" * 20)
    with pytest.raises(DatasetError, match="garbage.mat"):
        load_mat(garbage)
    hdf5 = tmp_path / "v73.mat"
    hdf5.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(512, b" "))
    with pytest.raises(DatasetError, match="v7.3"):
        load_mat(hdf5)


def test_wrong_key_lists_the_variables_found(tmp_path):
    path = tmp_path / "pool.mat"
    scipy.io.savemat(path, {"images": np.zeros(3)})
    with pytest.raises(DatasetError, match=r"pool.mat holds no variable 'pool' .*'images'"):
        mat_variable(path, "pool")
    assert mat_variable(path, ("pool", "images"))[0] == "images"


def test_row_column_and_cell_wrapped_struct_arrays_read_alike(tmp_path):
    names = ["s1.jpg", "s2.jpg", "s3.jpg"]
    cell = np.empty((3, 1), dtype=object)
    for i, name in enumerate(names):
        cell[i, 0] = _structs((1, 1), [name])
        cell[i, 0]["idlocate"][0, 0] = np.array([[i, 2, 3, 4]], dtype=np.uint8)
    path = tmp_path / "s.mat"
    scipy.io.savemat(
        path,
        {
            "row": _structs((1, 3), names),
            "col": _structs((3, 1), names),
            "cell": cell,
            "empty": np.zeros((0, 0)),
        },
    )
    mat = load_mat(path)
    for key in ("row", "col", "cell"):
        records = as_records(mat[key], key)
        assert [as_string(get_field(r, "imname", key), key) for r in records] == names
        assert as_numbers(records[2]["idlocate"], key).tolist() == [2, 2, 3, 4]
    assert as_records(mat["empty"], "empty") == []
    with pytest.raises(DatasetError, match="expected one struct, found 3"):
        as_record(mat["row"], "row")
    with pytest.raises(DatasetError, match="no field 'idname'"):
        get_field(as_records(mat["row"], "row")[0], "idname", "row")


def test_strings_numbers_and_matrices(tmp_path):
    path = tmp_path / "v.mat"
    cell = np.empty((2, 1), dtype=object)
    cell[0, 0], cell[1, 0] = "c1s1_000151", "c3s1_000551"
    scipy.io.savemat(
        path,
        {
            "cell": cell,
            "one": "s9.jpg",
            "box": np.array([[250, 200, 10, 90]], dtype=np.uint8),
            "rows": np.ones((2, 5)),
            "empty": np.zeros((1, 0)),
        },
    )
    mat = load_mat(path)
    assert as_strings(mat["cell"], "cell") == ["c1s1_000151", "c3s1_000551"]
    assert as_strings(mat["one"], "one") == ["s9.jpg"]
    assert as_string(mat["one"], "one") == "s9.jpg"
    numbers = as_numbers(mat["box"], "box")
    assert numbers.dtype == np.float64 and numbers[0] + numbers[2] == 260  # no uint8 overflow
    assert as_numbers(mat["empty"], "empty").size == 0
    assert as_matrix(mat["rows"], 5, "rows").shape == (2, 5)
    assert as_matrix(mat["empty"], 5, "empty").shape == (0, 5)
    with pytest.raises(DatasetError, match=r"rows: expected an N x 4 matrix, found shape \(2, 5\)"):
        as_matrix(mat["rows"], 4, "rows")
    with pytest.raises(DatasetError, match="box: expected a string"):
        as_string(mat["box"], "box")
    with pytest.raises(DatasetError, match="cell: expected numbers"):
        as_numbers(mat["cell"], "cell")


def test_require_file_suggests_the_nested_dataset_folder(tmp_path):
    (tmp_path / "CUHK-SYSU" / "annotation").mkdir(parents=True)
    (tmp_path / "CUHK-SYSU" / "annotation" / "pool.mat").write_bytes(b"")
    with pytest.raises(
        DatasetError,
        match=r"annotation/pool.mat not found under .* is .* the "
        r"dataset\? \(found it under .*CUHK-SYSU: use that as the root\)",
    ):
        require_file(tmp_path, "annotation/pool.mat", "the dataset")
    with pytest.raises(DatasetError, match="is not a folder"):
        require_file(tmp_path / "nowhere", "annotation/pool.mat", "the dataset")
    assert require_file(tmp_path / "CUHK-SYSU", "annotation/pool.mat", "x").is_file()
