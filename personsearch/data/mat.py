"""Reading MATLAB annotation files robustly, with errors that name the file and the problem.

`scipy.io.loadmat` returns MATLAB values wrapped in layers that vary between files and releases:
a string is `array(['s1.jpg'])`, a struct array may be 1 x N or N x 1, a cell of one struct is an
object array holding a 1 x 1 struct array, an absent value is an empty 1 x 0 double array, and
integers are saved in the smallest type that holds them (uint8 in one record, uint16 in the next).
The helpers here unwrap those layers so readers can state what they expect in one call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.errors import DatasetError


def require_file(root: Path, relative: str, what: str) -> Path:
    """Return `root/relative`, or raise DatasetError saying what `root` should hold.

    `what` completes the question "is ROOT ...?", e.g. "the unpacked CUHK-SYSU folder (holding
    Image/SSM/ and annotation/)". When a sub-folder of `root` holds the file, the message names it:
    pointing at the parent of the dataset folder is the most common mistake.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder: is it {what}?")
    path = root / relative
    if path.exists():
        return path
    message = f"{relative} not found under {root}: is {root} {what}?"
    nested = sorted(child for child in root.iterdir() if (child / relative).exists())
    if nested:
        message += f" (found it under {nested[0]}: use that as the root)"
    raise DatasetError(message)


def load_mat(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a MATLAB v5 file; DatasetError when it is missing, truncated or not a .mat file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"MATLAB file not found: {path}")
    with open(path, "rb") as handle:
        header = handle.read(128)
    if b"MATLAB 7.3" in header:
        raise DatasetError(
            f"cannot read {path}: it is a MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7')"
        )
    try:
        from scipy.io import loadmat

        data = loadmat(path)
    except Exception as error:  # scipy raises many types on corrupt input (ValueError, zlib...)
        raise DatasetError(
            f"cannot read MATLAB file {path} (truncated or not a .mat file?): "
            f"{type(error).__name__}: {error}"
        ) from error
    return {key: value for key, value in data.items() if not key.startswith("__")}


def mat_variable(
    path: str | os.PathLike[str], keys: str | Sequence[str], mat: dict[str, Any] | None = None
) -> tuple[str, Any]:
    """Return (key, value) of the first of `keys` present in the file at `path`.

    Pass `mat` when the file is already loaded. DatasetError lists the variables the file holds.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    mat = load_mat(path) if mat is None else mat
    for key in keys:
        if key in mat:
            return key, mat[key]
    wanted = " or ".join(repr(k) for k in keys)
    found = ", ".join(repr(k) for k in sorted(mat)) or "none"
    raise DatasetError(f"{path} holds no variable {wanted} (variables found: {found})")


def unwrap(value: Any) -> Any:
    """Strip one-element object-array layers (a cell of one value, a 1 x 1 object wrapper)."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def describe(value: Any) -> str:
    """A short description of a loaded value for error messages."""
    if isinstance(value, np.ndarray):
        kind = "struct" if value.dtype.names else str(value.dtype)
        return f"{kind} array of shape {value.shape}"
    return type(value).__name__


def as_string(value: Any, where: str) -> str:
    """A MATLAB char array (in any wrapping) as a Python string, surrounding spaces stripped."""
    value = unwrap(value)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        if value.size == 1:
            return str(value.reshape(-1)[0]).strip()
        if value.size == 0:
            return ""
    raise DatasetError(f"{where}: expected a string, found {describe(value)}")


def as_strings(value: Any, where: str) -> list[str]:
    """A cell array of strings (any shape) or a char matrix (one string per row) as a list."""
    value = unwrap(value)
    if isinstance(value, str):
        return [value.strip()]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "U":
            return [str(item).strip() for item in value.reshape(-1, order="F")]
        if value.dtype == object:
            return [
                as_string(item, f"{where}, item {i + 1}")
                for i, item in enumerate(value.reshape(-1, order="F"))
            ]
        if value.size == 0:
            return []
    raise DatasetError(f"{where}: expected a list of strings, found {describe(value)}")


def as_numbers(value: Any, where: str) -> np.ndarray:
    """A numeric MATLAB array (any shape, any integer or float type) as a flat float64 array."""
    value = unwrap(value)
    if isinstance(value, int | float | np.number):
        return np.array([value], dtype=np.float64)
    if isinstance(value, np.ndarray) and (value.dtype.kind in "iufb" or value.size == 0):
        return value.astype(np.float64).reshape(-1, order="F")
    raise DatasetError(f"{where}: expected numbers, found {describe(value)}")


def as_matrix(value: Any, columns: int, where: str) -> np.ndarray:
    """A numeric N x `columns` matrix as float64; an empty array gives 0 rows."""
    value = unwrap(value)
    if not isinstance(value, np.ndarray) or (value.dtype.kind not in "iufb" and value.size):
        raise DatasetError(f"{where}: expected a numeric matrix, found {describe(value)}")
    if value.size == 0:
        return np.zeros((0, columns), dtype=np.float64)
    matrix = np.atleast_2d(value).astype(np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != columns:
        raise DatasetError(f"{where}: expected an N x {columns} matrix, found shape {value.shape}")
    return matrix


def as_records(value: Any, where: str) -> list[np.void]:
    """A struct array of any shape, or a cell array of structs, as a flat list of records.

    Order follows MATLAB's column-major indexing, so 1 x N and N x 1 arrays read the same.
    An empty array (MATLAB `[]` or a 0 x 0 struct) gives an empty list.
    """
    if isinstance(value, np.void) and value.dtype.names:
        return [value]
    if isinstance(value, np.ndarray):
        if value.dtype.names:
            return list(value.reshape(-1, order="F"))
        if value.size == 0:
            return []
        if value.dtype == object:
            records: list[np.void] = []
            for i, item in enumerate(value.reshape(-1, order="F")):
                records.extend(as_records(item, f"{where}, cell {i + 1}"))
            return records
    raise DatasetError(f"{where}: expected a struct array, found {describe(value)}")


def as_record(value: Any, where: str) -> np.void:
    """Exactly one struct (a 1 x 1 struct array, possibly inside a cell)."""
    records = as_records(value, where)
    if len(records) != 1:
        raise DatasetError(f"{where}: expected one struct, found {len(records)}")
    return records[0]


def get_field(record: np.void, name: str, where: str, position: int | None = None) -> Any:
    """Field `name` of a struct record; else the field at `position` when given; else an error."""
    names = record.dtype.names or ()
    if name in names:
        return record[name]
    if position is not None and position < len(names):
        return record[names[position]]
    raise DatasetError(f"{where}: struct has no field {name!r} (fields: {', '.join(names)})")
