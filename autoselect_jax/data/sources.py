"""Random-access example sources for Grain: JSONL manifests and Parquet files.

Every source yields dicts {"image": path | bytes | uint8 array, "prefix": str,
"suffix": str}. Images are decoded later, in the pipeline, where a broken one
is counted and masked instead of crashing the run.
"""

from __future__ import annotations

import bisect
import collections
import glob
import hashlib
import itertools
import json
import logging
import operator
import os
import tempfile
import threading
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
  an image column holding {"bytes": ..., "path": ...} structs, raw bytes or
  paths, and a caption column.

  Global row i is found by bisection over the row groups' first rows (an
  index built once from the footers). Row groups are read as Arrow tables and
  only the requested row becomes Python objects. Two read paths:

  * Parquet (default): decoded row groups sit in an LRU cache of at most
    `cache_bytes` per process (plus the group in use), so sequential access
    reads each group once. Under a global shuffle over data much larger than
    the cache nearly every row still costs a whole row-group read: Parquet
    has no cheaper way to one row.
  * Arrow (`arrow_dir`): each file is converted once into an uncompressed
    Arrow IPC file there, memory-mapped, and rows are read in place. Random
    access then costs one row, and the pages live in the OS page cache
    (shared by Grain workers, evictable), not in the process heap. The copy
    takes about the Parquet files' size on disk.

  The rows, their order and the repr (checkpointed) are the same either way.
  Files are sorted by path; a file matched by two patterns is read once.

  cache_bytes: bound of the row-group cache, in decoded Arrow bytes, per
    process (each Grain worker has its own); 0 keeps only the group in use.
  arrow_dir: where the one-time Arrow copies go (a local disk is best).
  """

  def __init__(self, pattern: str | Sequence[str], prompt: str = "caption en",
               image_column: str = "image", caption_column: str = "caption",
               cache_bytes: int = 256 * 2 ** 20, arrow_dir: str | None = None):
    import pyarrow.parquet as pq
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files = sorted({f for p in patterns for f in glob.glob(p)})
    if not files:
      raise FileNotFoundError(f"no Parquet files match {patterns} "
                              "(set --config.data.train_path)")
    if cache_bytes < 0:
      raise ValueError(f"cache_bytes={cache_bytes} must be >= 0")
    self.prompt = prompt
    self.image_column, self.caption_column = image_column, caption_column
    self.cache_bytes, self.arrow_dir = cache_bytes, arrow_dir
    self._files = files
    self._units = []  # (file index, row group or Arrow batch, rows), rows > 0.
    self._num_row_groups, metas = 0, {}
    for k, path in enumerate(files):
      with pq.ParquetFile(path) as f:
        self._check_schema(path, f.schema_arrow)
        meta = metas[k] = f.metadata
      self._num_row_groups += meta.num_row_groups
      self._units += [(k, g, meta.row_group(g).num_rows)
                      for g in range(meta.num_row_groups)]
    self._len = sum(u[2] for u in self._units)
    self._arrow_files = None
    if arrow_dir is not None:
      self._arrow_files = [self._convert(path, arrow_dir) for path in files]
      self._units = self._arrow_units()
    self._units = [u for u in self._units if u[2] > 0]
    self._starts = list(itertools.accumulate([0] + [u[2] for u in self._units]))
    self._reset()
    if arrow_dir is None:
      self._meta = metas

  def _check_schema(self, path: str, schema) -> None:
    import pyarrow as pa
    names = schema.names
    for col in (self.image_column, self.caption_column):
      if col not in names:
        raise ValueError(f"{path} has no column {col!r}; columns: {names} "
                         "(set --config.data.image_column / caption_column)")
    t = schema.field(self.image_column).type
    ok = self._is_bytes(t) or self._is_text(t) or (
        pa.types.is_struct(t) and any(t.get_field_index(n) >= 0
                                      for n in ("bytes", "path")))
    if not ok:
      raise ValueError(f"{path}: image column {self.image_column!r} is {t}; "
                       "want binary, string or a struct with 'bytes'/'path'")
    t = schema.field(self.caption_column).type
    if not self._is_text(t):
      raise ValueError(f"{path}: caption column {self.caption_column!r} is "
                       f"{t}; want a string column")

  @staticmethod
  def _is_bytes(t) -> bool:
    import pyarrow as pa
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
        pa.types.is_binary_view(t))

  @staticmethod
  def _is_text(t) -> bool:
    import pyarrow as pa
    return pa.types.is_string(t) or pa.types.is_large_string(t) or (
        pa.types.is_string_view(t))

  def _reset(self) -> None:
    """Per-process state: caches, counters, locks (never pickled)."""
    self._lock = threading.Lock()
    self._loading = {}  # unit -> Lock held by the one thread reading it.
    self._cache = collections.OrderedDict()  # unit -> (columns, nbytes)
    self._cached_bytes = 0
    self._meta = {}  # file index -> pq.FileMetaData (skips footer re-reads)
    self._batches = {}  # file index -> columns of its mapped batches
    self.reads = self.hits = 0

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:  # Part of the checkpointed iterator state.
    return f"ParquetSource({self._num_row_groups} row groups, n={self._len})"

  def __getstate__(self):  # Worker processes re-open and re-read lazily.
    state = dict(self.__dict__)
    for key in ("_lock", "_loading", "_cache", "_cached_bytes", "_meta",
                "_batches", "reads", "hits"):
      del state[key]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._reset()

  def cache_info(self) -> dict[str, int]:
    """Row-group reads and cache hits of this process, and the cache's size."""
    with self._lock:
      return {"reads": self.reads, "hits": self.hits,
              "groups": len(self._cache), "bytes": self._cached_bytes,
              "max_bytes": self.cache_bytes}

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = operator.index(i)
    if not 0 <= i < self._len:
      raise IndexError(f"row {i} out of range for {self!r}")
    u = bisect.bisect_right(self._starts, i) - 1
    images, paths, captions = self._unit(u)
    j = i - self._starts[u]
    image = images[j].as_py() if images is not None else None
    if not image and paths is not None:
      image = paths[j].as_py()
    return {"image": image, "prefix": self.prompt,
            "suffix": captions[j].as_py()}

  # --- reading ---------------------------------------------------------------

  def _columns(self, table):
    """(image bytes | None, image paths | None, captions) Arrow arrays."""
    import pyarrow as pa
    import pyarrow.compute as pc
    image = table.column(self.image_column)
    t = image.type
    if pa.types.is_struct(t):
      field = lambda n: (pc.struct_field(image, n)
                         if t.get_field_index(n) >= 0 else None)
      images, paths = field("bytes"), field("path")
    else:
      images, paths = (None, image) if self._is_text(t) else (image, None)
    return images, paths, table.column(self.caption_column)

  def _unit(self, u: int):
    if self._arrow_files is not None:
      return self._arrow_unit(u)
    with self._lock:
      hit = self._lookup(u)
      if hit is not None:
        return hit
      loading = self._loading.setdefault(u, threading.Lock())
    with loading:  # Threads wanting the same group wait for one read.
      with self._lock:
        hit = self._lookup(u)
        if hit is not None:
          return hit
      table = self._read_group(u)
      cols = self._columns(table)
      with self._lock:
        self.reads += 1
        self._cache[u] = (cols, table.nbytes)
        self._cached_bytes += table.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
          self._cached_bytes -= self._cache.popitem(last=False)[1][1]
        self._loading.pop(u, None)
      return cols

  def _lookup(self, u: int):
    entry = self._cache.get(u)
    if entry is None:
      return None
    self._cache.move_to_end(u)
    self.hits += 1
    return entry[0]

  def _read_group(self, u: int):
    import pyarrow.parquet as pq
    k, g, _ = self._units[u]
    path = self._files[k]
    # A fresh handle per read (cheap given the footer) is thread-safe and
    # holds no file descriptor between reads.
    with pq.ParquetFile(path, metadata=self._meta.get(k)) as f:
      self._meta[k] = f.metadata
      # Threads inside one small read cost more than they save (2.7x on 2
      # cores); Grain parallelises over reads instead.
      return f.read_row_group(g, columns=[self.image_column,
                                          self.caption_column],
                              use_threads=False)

  # --- the Arrow copy ---------------------------------------------------------

  def _convert(self, path: str, arrow_dir: str) -> str:
    """`arrow_dir`/NAME-KEY.arrow for one Parquet file, written unless it
    exists. KEY hashes the file's path, size, mtime and the two columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    st = os.stat(path)
    key = hashlib.sha256(repr((os.path.abspath(path), st.st_size,
                               st.st_mtime_ns, self.image_column,
                               self.caption_column)).encode()).hexdigest()
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(arrow_dir, f"{stem}-{key[:16]}.arrow")
    if os.path.exists(out):
      return out
    os.makedirs(arrow_dir, exist_ok=True)
    logging.info("ParquetSource: converting %s -> %s", path, out)
    cols = [self.image_column, self.caption_column]
    fd, tmp = tempfile.mkstemp(dir=arrow_dir, suffix=".arrow.tmp")
    os.close(fd)
    try:
      with pq.ParquetFile(path) as f, pa.OSFile(tmp, "wb") as sink:
        schema = pa.schema([f.schema_arrow.field(c) for c in cols])
        with pa.ipc.new_file(sink, schema) as writer:
          for g in range(f.num_row_groups):
            table = f.read_row_group(g, columns=cols, use_threads=False)
            writer.write_table(table.select(cols).cast(schema))
      os.replace(tmp, out)  # Atomic: readers never see a partial file.
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return out

  def _open_arrow(self, k: int):
    import pyarrow as pa
    path = self._arrow_files[k]
    try:
      with pa.memory_map(path) as mm:
        reader = pa.ipc.open_file(mm)
        # Zero-copy views; they keep the mapping alive after the file closes.
        return [reader.get_batch(b) for b in range(reader.num_record_batches)]
    except (OSError, pa.ArrowInvalid) as e:
      raise ValueError(f"cannot read the Arrow copy {path} of "
                       f"{self._files[k]} ({e}); delete it to convert "
                       "again") from None

  def _arrow_units(self):
    """The Arrow copies' record batches as units, checked against Parquet."""
    units = []
    for k, path in enumerate(self._arrow_files):
      batches = self._open_arrow(k)
      rows = sum(u[2] for u in self._units if u[0] == k)
      if sum(b.num_rows for b in batches) != rows:
        raise ValueError(f"{path} holds {sum(b.num_rows for b in batches)} "
                         f"rows, its Parquet file {self._files[k]} {rows}; "
                         "delete it to convert again")
      units += [(k, b, batch.num_rows) for b, batch in enumerate(batches)]
    return units

  def _arrow_unit(self, u: int):
    k, b, _ = self._units[u]
    with self._lock:
      cols = self._batches.get(k)
      if cols is None:  # Once per file and process.
        cols = self._batches[k] = [self._columns(x)
                                   for x in self._open_arrow(k)]
    return cols[b]
