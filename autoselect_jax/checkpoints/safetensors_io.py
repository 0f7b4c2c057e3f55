"""Pickle-free safetensors reading: one file, or an HF folder of shards.

A thin Mapping over `safetensors.safe_open(framework="np")`, which
memory-maps the file and copies out one tensor per lookup. No custom format
reader is needed: safetensors >= 0.8 (the pinned minimum) returns BF16
tensors as `ml_dtypes.bfloat16` arrays. It looks that dtype up by its numpy
name, which exists only once ml_dtypes is imported (without it, reading a
BF16 tensor fails with "data type 'bfloat16' not understood"), so this
module imports ml_dtypes.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

del ml_dtypes  # Imported only to register numpy's 'bfloat16' for safe_open.


class SafetensorsFile(Mapping[str, np.ndarray]):
  """Read-only mapping name -> array of one `.safetensors` file."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._file = safe_open(path, framework="np")
    except SafetensorError as e:
      raise ValueError(f"{path}: not a readable safetensors file: {e}") from None
    self._names = dict.fromkeys(self._file.keys())

  def __contains__(self, name) -> bool:  # Mapping's default reads the tensor.
    return name in self._names

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._names:
      raise KeyError(f"{self.path} holds no tensor {name!r}")
    try:
      return self._file.get_tensor(name)
    except (SafetensorError, TypeError) as e:
      raise ValueError(f"{self.path}: cannot read tensor {name!r}: {e}") from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)


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
