"""Random-access example sources for Grain: JSONL manifests and Parquet files.

Every source yields dicts {"image": path | bytes | uint8 array, "prefix": str,
"suffix": str}. Images are decoded later, in the pipeline, where a broken one
is counted and masked instead of crashing the run.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Sequence


class JsonlSource:
  """A JSONL manifest: one object per line with `image` (a path, relative to
  the manifest's folder or absolute) and either `caption` or `prefix` +
  `suffix`. Captions get `prompt` as their prefix."""

  def __init__(self, path: str, prompt: str = "caption en",
               image_key: str = "image", caption_key: str = "caption"):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"data manifest {path} does not exist "
                              "(set --config.data.train_path)")
    self.path = path
    root = os.path.dirname(os.path.abspath(path))
    self._records = []
    with open(path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
        if image_key not in rec:
          raise ValueError(f"{path}:{lineno}: no {image_key!r} field")
        if caption_key in rec:
          prefix, suffix = prompt, rec[caption_key]
        elif "suffix" in rec:
          prefix, suffix = rec.get("prefix", prompt), rec["suffix"]
        else:
          raise ValueError(f"{path}:{lineno}: needs {caption_key!r} or "
                           "'prefix'/'suffix'")
        image = rec[image_key]
        if not os.path.isabs(image):
          image = os.path.join(root, image)
        self._records.append({"image": image, "prefix": prefix,
                              "suffix": suffix})
    if not self._records:
      raise ValueError(f"data manifest {path} holds no examples")

  def __len__(self) -> int:
    return len(self._records)

  def __repr__(self) -> str:  # Part of the checkpointed iterator state.
    return f"JsonlSource({os.path.abspath(self.path)!r}, n={len(self)})"

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self._records[i]


class ParquetSource:
  """Parquet files as exported by HF `datasets` (e.g. ImageNet-1K-VL-Enriched):
  an image column holding {"bytes": ..., "path": ...} structs or raw bytes, and
  a caption column. Rows are read lazily, one row group at a time."""

  def __init__(self, pattern: str | Sequence[str], prompt: str = "caption en",
               image_column: str = "image", caption_column: str = "caption"):
    import pyarrow.parquet as pq
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files = sorted(f for p in patterns for f in glob.glob(p))
    if not files:
      raise FileNotFoundError(f"no Parquet files match {patterns} "
                              "(set --config.data.train_path)")
    self.prompt = prompt
    self.image_column, self.caption_column = image_column, caption_column
    self._groups = []  # (file, row group, first global row, rows)
    total = 0
    for path in files:
      meta = pq.ParquetFile(path)
      names = meta.schema_arrow.names
      for col in (image_column, caption_column):
        if col not in names:
          raise ValueError(f"{path} has no column {col!r}; columns: {names} "
                           "(set --config.data.image_column / caption_column)")
      for g in range(meta.num_row_groups):
        n = meta.metadata.row_group(g).num_rows
        self._groups.append((path, g, total, n))
        total += n
    self._len = total
    self._cache: tuple[tuple[str, int], Any] | None = None

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:  # Part of the checkpointed iterator state.
    return f"ParquetSource({len(self._groups)} row groups, n={self._len})"

  def _group(self, path, g):
    import pyarrow.parquet as pq
    if self._cache is None or self._cache[0] != (path, g):
      table = pq.ParquetFile(path).read_row_group(
          g, columns=[self.image_column, self.caption_column])
      self._cache = ((path, g), table.to_pydict())
    return self._cache[1]

  def __getitem__(self, i: int) -> dict[str, Any]:
    if not 0 <= i < self._len:
      raise IndexError(i)
    lo, hi = 0, len(self._groups) - 1
    while lo < hi:  # Binary search for the row group holding row i.
      mid = (lo + hi + 1) // 2
      if self._groups[mid][2] <= i:
        lo = mid
      else:
        hi = mid - 1
    path, g, start, _ = self._groups[lo]
    cols = self._group(path, g)
    image = cols[self.image_column][i - start]
    if isinstance(image, dict):
      image = image.get("bytes") or image.get("path")
    return {"image": image, "prefix": self.prompt,
            "suffix": cols[self.caption_column][i - start]}

  def __getstate__(self):  # Worker processes re-read lazily.
    state = dict(self.__dict__)
    state["_cache"] = None
    return state
