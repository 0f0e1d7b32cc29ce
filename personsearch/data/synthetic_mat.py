"""A small, fast, deterministic MATLAB v5 writer for the synthetic world's annotation files.

scipy's `savemat` encodes element by element in Python and does not compress by default: the full
preset's TestG4000 (2,900 queries x 4,000 gallery entries) takes many minutes and gigabytes that
way. CUHK-SYSU's own files are zlib-compressed v5 files. Here values encode once to bytes (a
gallery entry that says "this image, person absent" is the same bytes for every query, so callers
pre-encode it with `encode_fields`), and a top-level struct or cell array streams element by
element into a `miCOMPRESSED` block. The header carries no timestamp, so files are byte-identical
for identical content. Values: str (char row), 2-D numeric ndarray (uint8, uint16, float64),
`Struct`, `Cell`, and `Encoded` (pre-encoded struct-element field values).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# MAT v5 data types and array classes
_MI_INT8, _MI_UINT8, _MI_UINT16, _MI_INT32, _MI_UINT32 = 1, 2, 4, 5, 6
_MI_DOUBLE, _MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 9, 14, 15, 16
_MX_CELL, _MX_STRUCT, _MX_CHAR, _MX_DOUBLE, _MX_UINT8, _MX_UINT16 = 1, 2, 4, 6, 9, 11
_NUMERIC = {
    np.dtype(np.float64): (_MX_DOUBLE, _MI_DOUBLE),
    np.dtype(np.uint8): (_MX_UINT8, _MI_UINT8),
    np.dtype(np.uint16): (_MX_UINT16, _MI_UINT16),
}
_FIELD_NAME_LENGTH = 32


class Encoded(bytes):
    """The encoded field values of one struct element (see `encode_fields`)."""


@dataclass(frozen=True)
class Struct:
    """A struct array: `rows` are tuples of field values, or `Encoded` rows, in column-major order."""

    fields: tuple[str, ...]
    rows: Sequence[tuple | Encoded]
    shape: tuple[int, int] | None = None  #: default 1 x len(rows)


@dataclass(frozen=True)
class Cell:
    """A cell array of values in column-major order (default N x 1)."""

    items: Sequence[Any]
    shape: tuple[int, int] | None = None


def _element(data_type: int, payload: bytes) -> bytes:
    """A data element, in the 8-byte small format when the payload fits in four bytes."""
    if 0 < len(payload) <= 4:
        return struct.pack("<HH", data_type, len(payload)) + payload.ljust(4, b"\0")
    padding = -len(payload) % 8
    return struct.pack("<II", data_type, len(payload)) + payload + b"\0" * padding


def _matrix(array_class: int, dims: tuple[int, int], body: bytes, name: str = "") -> bytes:
    header = (
        _element(_MI_UINT32, struct.pack("<II", array_class, 0))
        + _element(_MI_INT32, struct.pack("<ii", *dims))
        + _element(_MI_INT8, name.encode("ascii"))
    )
    return struct.pack("<II", _MI_MATRIX, len(header) + len(body)) + header + body


def _struct_header(fields: tuple[str, ...]) -> bytes:
    names = b"".join(f.encode("ascii").ljust(_FIELD_NAME_LENGTH, b"\0") for f in fields)
    return _element(_MI_INT32, struct.pack("<i", _FIELD_NAME_LENGTH)) + _element(_MI_INT8, names)


def encode(value: Any, name: str = "") -> bytes:
    """One value as a complete miMATRIX element."""
    if isinstance(value, str):
        data = value.encode("utf-8")
        return _matrix(_MX_CHAR, (1, len(value)), _element(_MI_UTF8, data), name)
    if isinstance(value, np.ndarray):
        if value.dtype not in _NUMERIC or value.ndim != 2:
            raise TypeError(f"unsupported array {value.dtype} {value.shape}")
        array_class, data_type = _NUMERIC[value.dtype]
        data = np.asfortranarray(value).tobytes(order="F")
        return _matrix(array_class, value.shape, _element(data_type, data), name)
    if isinstance(value, Struct):
        shape = value.shape or (1, len(value.rows))
        body = _struct_header(value.fields) + b"".join(_row(value.fields, r) for r in value.rows)
        return _matrix(_MX_STRUCT, shape, body, name)
    if isinstance(value, Cell):
        shape = value.shape or (len(value.items), 1)
        return _matrix(_MX_CELL, shape, b"".join(encode(item) for item in value.items), name)
    raise TypeError(f"cannot encode {type(value).__name__} as MATLAB data")


def encode_fields(fields: tuple[str, ...], row: tuple) -> Encoded:
    """Pre-encode one struct element's field values, to reuse it in many struct arrays."""
    if len(row) != len(fields):
        raise ValueError(f"{len(row)} values for fields {fields}")
    return Encoded(b"".join(encode(v) for v in row))


def _row(fields: tuple[str, ...], row: tuple | Encoded) -> bytes:
    return row if isinstance(row, Encoded) else encode_fields(fields, row)


def write_mat(path: str | Path, name: str, value: Any, description: str) -> None:
    """Write one variable to a compressed MAT v5 file; top-level arrays stream element-wise."""
    if isinstance(value, Struct):
        shape, head = value.shape or (1, len(value.rows)), _struct_header(value.fields)
        array_class = _MX_STRUCT

        def parts() -> Iterator[bytes]:
            return (_row(value.fields, r) for r in value.rows)
    elif isinstance(value, Cell):
        shape, head, array_class = value.shape or (len(value.items), 1), b"", _MX_CELL

        def parts() -> Iterator[bytes]:
            return (encode(item) for item in value.items)
    else:
        shape, head, array_class = (0, 0), b"", -1

        def parts() -> Iterator[bytes]:
            return iter([encode(value, name)])

    header = description.encode("ascii")[:116].ljust(116, b" ")
    header += b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    compressor = zlib.compressobj(6)
    chunks = []
    if array_class >= 0:
        # the size of the whole array is needed up front: a first pass over the parts sums it
        body_size = len(head) + sum(len(p) for p in parts())
        prefix = _matrix(array_class, shape, b"", name)
        prefix = struct.pack("<II", _MI_MATRIX, len(prefix) - 8 + body_size) + prefix[8:] + head
        chunks.append(compressor.compress(prefix))
    for part in parts():
        chunks.append(compressor.compress(part))
    chunks.append(compressor.flush())
    compressed = b"".join(chunks)
    with open(path, "wb") as handle:
        handle.write(header)
        handle.write(struct.pack("<II", _MI_COMPRESSED, len(compressed)))
        handle.write(compressed)
