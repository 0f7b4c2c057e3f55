"""A small, pickle-free safetensors reader that memory-maps the file.

safetensors' own numpy loader has no bfloat16; published PaliGemma shards are
often bfloat16, so this reads the format directly (8-byte header length, JSON
header, raw little-endian data) with ml_dtypes for bfloat16.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class SafetensorsFile(Mapping[str, np.ndarray]):
  """Read-only mapping name -> array, backed by a memory map of one file."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
      (n,) = struct.unpack("<Q", raw)
      if n > os.path.getsize(path) - 8:
        raise ValueError(f"{path}: corrupt safetensors header length {n}")
      header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    self._header = header
    self._offset = 8 + n
    self._mmap = np.memmap(path, dtype=np.uint8, mode="r")

  def __getitem__(self, name: str) -> np.ndarray:
    info = self._header[name]
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype "
                       f"{info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    buf = self._mmap[self._offset + start:self._offset + end]
    shape = tuple(info["shape"])
    if buf.size != dtype.itemsize * int(np.prod(shape)):
      raise ValueError(f"{self.path}: tensor {name!r} is truncated")
    return buf.view(dtype).reshape(shape)

  def __iter__(self) -> Iterator[str]:
    return iter(self._header)

  def __len__(self) -> int:
    return len(self._header)


class SafetensorsFolder(Mapping[str, np.ndarray]):
  """All tensors of an HF folder: `model.safetensors`, or shards + index."""

  def __init__(self, folder: str):
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = {}
      self._where = {}
      for name, shard in weight_map.items():
        path = os.path.join(folder, shard)
        if path not in files:
          if not os.path.exists(path):
            raise FileNotFoundError(f"{index} names shard {shard!r}, which is "
                                    f"missing from {folder}")
          files[path] = SafetensorsFile(path)
        if name not in files[path]:
          raise ValueError(f"{index} places {name!r} in {shard!r}, which does "
                           "not hold it")
        self._where[name] = files[path]
    elif os.path.exists(single):
      f = SafetensorsFile(single)
      self._where = {name: f for name in f}
    else:
      raise FileNotFoundError(
          f"{folder} holds neither model.safetensors nor "
          "model.safetensors.index.json (only safetensors are read; pickle-"
          "based .bin/.pt files are refused)")

  def __getitem__(self, name: str) -> np.ndarray:
    return self._where[name][name]

  def __iter__(self):
    return iter(self._where)

  def __len__(self):
    return len(self._where)
