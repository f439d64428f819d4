"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed).

An IDX file is a big-endian header, the magic number ``0x0000TTNN`` (``TT`` the element type,
``08`` for unsigned bytes; ``NN`` the number of dimensions), then ``NN`` dimension sizes as
unsigned 32-bit integers, then the data in C order.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from avggrad.data.errors import DataError

_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (``.gz`` or plain) into an array of its declared shape.

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    DataError: for a bad magic number, an unknown element type, or a data size that does not
      match the header (nothing is silently truncated or padded).
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise DataError(f"{path}: cannot be read as {'gzip' if opener is gzip.open else 'IDX'} "
                    f"({e}).") from e
  if len(raw) < 4:
    raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes).")
  zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or type_code not in _TYPES or ndim == 0:
    raise DataError(
        f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTNN with TT in "
        f"{', '.join(f'{t:02x}' for t in _TYPES)} and NN the number of dimensions)."
    )
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: header declares {ndim} dimensions but the file ends early.")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = _TYPES[type_code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  actual = len(raw) - header
  if actual != expected:
    raise DataError(
        f"{path}: header declares shape {shape} ({expected} bytes of data) but the file holds "
        f"{actual} bytes."
    )
  return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` (uint8) as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
  array = np.ascontiguousarray(array, dtype=np.uint8)
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())
