"""msgpack with numpy arrays, in the wire form openpi's client speaks (no pickle).

An array travels as the map {"__ndarray__": True, "data": raw bytes, "dtype": numpy dtype
string, "shape": [...]}, a numpy scalar as {"__npgeneric__": True, "data", "dtype"}.
Keys are written as bytes, as openpi's packer writes them (its unpacker looks them up as
bytes); both bytes and str keys are read. Decoding checks every array before building it:
only bool/int/uint/float dtypes, a non-negative shape whose size matches the bytes, so a
malformed request is a `VlaxError` naming the problem, never a crash or an object array.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from vlax.errors import VlaxError

ARRAY_KINDS = "biuf"  # bool, int, uint, float: nothing that needs an object or a pickle
MAX_NDIM = 8


def _encode(obj: Any) -> Any:
  if isinstance(obj, np.ndarray):
    if obj.dtype.kind not in ARRAY_KINDS:
      raise TypeError(f"cannot send a numpy array of dtype {obj.dtype}")
    obj = np.ascontiguousarray(obj)
    return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str,
            b"shape": list(obj.shape)}
  if isinstance(obj, np.generic):
    if obj.dtype.kind not in ARRAY_KINDS:
      raise TypeError(f"cannot send a numpy scalar of dtype {obj.dtype}")
    return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
  raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def packb(obj: Any) -> bytes:
  """A Python/numpy structure -> msgpack bytes (arrays in openpi's form)."""
  return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _get(d: dict, key: str) -> Any:
  return d[key.encode()] if key.encode() in d else d.get(key)


def _dtype(value: Any) -> np.dtype:
  if isinstance(value, bytes):
    value = value.decode("ascii", "replace")
  try:
    dtype = np.dtype(str(value))
  except TypeError:
    raise VlaxError(f"array dtype {value!r} is not a numpy dtype") from None
  if dtype.kind not in ARRAY_KINDS:
    raise VlaxError(f"array dtype {dtype} is not allowed (bool, int, uint, float only)")
  return dtype


def _decode(d: dict) -> Any:
  if _get(d, "__ndarray__"):
    dtype, data, shape = _dtype(_get(d, "dtype")), _get(d, "data"), _get(d, "shape")
    if not isinstance(data, bytes):
      raise VlaxError(f"array data must be bytes, got {type(data).__name__}")
    if (not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM
        or not all(isinstance(s, int) and s >= 0 for s in shape)):
      raise VlaxError(f"array shape must be a list of at most {MAX_NDIM} non-negative "
                      f"ints, got {shape!r}")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
      raise VlaxError(f"array of shape {list(shape)} and dtype {dtype} needs "
                      f"{int(np.prod(shape, dtype=np.int64)) * dtype.itemsize} bytes, got "
                      f"{len(data)}")
    return np.frombuffer(data, dtype).reshape(shape)
  if _get(d, "__npgeneric__"):
    try:
      return _dtype(_get(d, "dtype")).type(_get(d, "data"))
    except (TypeError, ValueError, OverflowError) as e:
      raise VlaxError(f"bad numpy scalar: {e}") from None
  return d


def unpackb(data: bytes) -> Any:
  """msgpack bytes -> Python/numpy; VlaxError for anything that is not valid msgpack."""
  try:
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=True)
  except VlaxError:
    raise
  except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData,
          RecursionError) as e:
    raise VlaxError(f"request is not a msgpack message ({type(e).__name__}: {e})") from None
