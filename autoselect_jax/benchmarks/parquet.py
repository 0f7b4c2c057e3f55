"""Examples/s of the Parquet source: the old reader against the new one.

    python -m autoselect_jax.benchmarks.parquet [--rows 20000] [--out FILE]

Writes a synthetic HF-`datasets`-style Parquet dataset (image column of
{"bytes", "path"} structs holding distinct noise JPEGs, a caption column,
snappy, several files, fixed-size row groups) into a temporary folder, then
times `__getitem__` in Grain's global-shuffle order (IndexSampler,
shuffle=True) and in sequential order for:

  legacy        the reader this project had before (`_LegacyParquetSource`,
                copied below unchanged): one cached row group, whole-group
                `to_pydict()`;
  parquet       `ParquetSource` with its default 256 MiB cache (the whole
                synthetic set fits);
  parquet_small `ParquetSource` with a cache of 1/16 of the decoded data,
                the regime of ImageNet-scale data (cache << dataset);
  arrow         `ParquetSource(arrow_dir=...)`, the memory-mapped Arrow copy
                (its one-time conversion is timed separately).

`--loader` adds a full Grain `make_loader` pass (JPEG decode, resize,
tokenize with the demo tokenizer, batch). The files were just written, so
they sit in the OS page cache: this measures CPU cost, not the disk.
Each timing uses a fresh source (cold cache) and stops after `--seconds`.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np


class _LegacyParquetSource:
  """LEGACY, for comparison only: the Parquet reader before the rewrite."""

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


def _log(msg: str) -> None:
  print(f"[parquet bench] {msg}", file=sys.stderr, flush=True)


def write_dataset(folder: str, rows: int, files: int, row_group: int,
                  image_px: int, seed: int = 0) -> dict:
  """Distinct noise JPEGs + captions in `files` Parquet files; returns sizes."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  from PIL import Image
  rng = np.random.default_rng(seed)
  per_file = -(-rows // files)
  jpeg_bytes = 0
  for k in range(files):
    lo, hi = k * per_file, min(rows, (k + 1) * per_file)
    images = []
    for i in range(lo, hi):
      buf = io.BytesIO()
      pixels = rng.integers(0, 256, (image_px, image_px, 3), np.uint8)
      Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
      images.append({"bytes": buf.getvalue(), "path": f"{i:08d}.jpg"})
      jpeg_bytes += len(images[-1]["bytes"])
    captions = [f"a photo of object {i}, kind {i % 997}"
                for i in range(lo, hi)]
    table = pa.table({"image": images, "caption": captions})
    pq.write_table(table, os.path.join(folder, f"train-{k:05d}.parquet"),
                   row_group_size=row_group)
  disk = sum(os.path.getsize(p) for p in glob.glob(f"{folder}/*.parquet"))
  return {"rows": rows, "files": files, "row_group_rows": row_group,
          "image_px": image_px, "mean_jpeg_bytes": jpeg_bytes / rows,
          "parquet_bytes": disk}


def shuffled_order(n: int, seed: int = 0) -> list[int]:
  """Record keys in the order Grain's IndexSampler(shuffle=True) visits them."""
  import grain.python as grain
  sampler = grain.IndexSampler(n, shard_options=grain.NoSharding(),
                               shuffle=True, num_epochs=1, seed=seed)
  return [int(sampler[k].record_key) for k in range(n)]


def time_access(make, order: Sequence[int], seconds: float) -> dict:
  """examples/s of src[i] over `order` on a fresh source, up to `seconds`."""
  src = make()
  n, t0 = 0, time.perf_counter()
  for i in order:
    src[i]
    n += 1
    if n % 64 == 0 and time.perf_counter() - t0 > seconds:
      break
  dt = time.perf_counter() - t0
  out = {"examples": n, "seconds": round(dt, 3),
         "examples_per_s": round(n / dt, 1)}
  if hasattr(src, "cache_info"):
    info = src.cache_info()
    out.update(group_reads=info["reads"], cache_bytes_end=info["bytes"])
  return out


def time_loader(make, seconds: float, batch_size: int = 64) -> dict:
  """examples/s of a shuffled Grain make_loader pass (decode, tokenize)."""
  from autoselect_jax.data.pipeline import make_loader
  from autoselect_jax.demo.pretrain import make_processor
  from autoselect_jax.models import get_variant
  processor = make_processor(get_variant("demo"))
  loader = make_loader(make(), processor, batch_size=batch_size,
                       max_text_len=32, seed=0, shuffle=True, num_epochs=1)
  n, t0 = 0, time.perf_counter()
  for batch in loader:
    n += len(batch["valid"])
    if time.perf_counter() - t0 > seconds:
      break
  dt = time.perf_counter() - t0
  return {"examples": n, "seconds": round(dt, 3),
          "examples_per_s": round(n / dt, 1),
          "image_px": processor.image_size}


def run(args) -> dict:
  import pyarrow.parquet as pq
  from autoselect_jax.data.sources import ParquetSource
  result = {"machine": {"cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "command": "python -m autoselect_jax.benchmarks.parquet "
                       + " ".join(sys.argv[1:])}
  with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    t0 = time.perf_counter()
    result["dataset"] = write_dataset(data, args.rows, args.files,
                                      args.row_group, args.image_px)
    _log(f"wrote {result['dataset']} in {time.perf_counter() - t0:.1f} s")
    pattern = os.path.join(data, "*.parquet")
    n = len(ParquetSource(pattern))
    decoded = sum(pq.read_table(f, columns=["image", "caption"]).nbytes
                  for f in glob.glob(pattern))  # Arrow bytes in memory.
    result["dataset"]["decoded_bytes"] = decoded
    arrow_dir = os.path.join(tmp, "arrow")
    t0 = time.perf_counter()
    ParquetSource(pattern, arrow_dir=arrow_dir)
    result["arrow_conversion_s"] = round(time.perf_counter() - t0, 3)
    result["arrow_bytes"] = sum(os.path.getsize(p) for p in
                                glob.glob(f"{arrow_dir}/*.arrow"))
    small = max(1, decoded // 16)
    makers = {
        "legacy": lambda: _LegacyParquetSource(pattern),
        "parquet": lambda: ParquetSource(pattern),
        "parquet_small": lambda: ParquetSource(pattern, cache_bytes=small),
        "arrow": lambda: ParquetSource(pattern, arrow_dir=arrow_dir),
    }
    result["parquet_small_cache_bytes"] = small
    orders = {"random": shuffled_order(n), "sequential": list(range(n))}
    for name, make in makers.items():
      for kind, order in orders.items():
        if name == "parquet_small" and kind == "sequential":
          continue  # Same as "parquet": one group in use at a time.
        r = time_access(make, order, args.seconds)
        result[f"{name}_{kind}"] = r
        _log(f"{name:13s} {kind:10s} {r['examples_per_s']:>10.1f} examples/s "
             f"({r['examples']} in {r['seconds']} s)")
    if args.loader:
      for name in ("legacy", "parquet", "arrow"):
        r = time_loader(makers[name], args.seconds)
        result[f"{name}_loader"] = r
        _log(f"{name:13s} loader     {r['examples_per_s']:>10.1f} examples/s")
  return result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", type=int, default=20_000)
  p.add_argument("--files", type=int, default=4)
  p.add_argument("--row-group", type=int, default=500,
                 help="rows per row group (HF image exports: 100-1000)")
  p.add_argument("--image-px", type=int, default=64,
                 help="side of the noise JPEGs (64 px: about 6 KB each)")
  p.add_argument("--seconds", type=float, default=8.0,
                 help="time limit of each measurement")
  p.add_argument("--loader", action="store_true",
                 help="also time a shuffled Grain make_loader pass")
  p.add_argument("--out", default="", help="also write the JSON here")
  args = p.parse_args(argv)
  result = run(args)
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
