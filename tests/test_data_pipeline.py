"""Grain input: JSONL and Parquet sources, bad images counted, exact resume."""

from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from autoselect_jax.checkpoints import store
from autoselect_jax.data.pipeline import make_loader, make_source
from autoselect_jax.data.processor import Processor


@pytest.fixture(scope="module")
def processor(hf_mqa):
  ckpt = hf_mqa[3]
  return Processor.from_checkpoint(ckpt, store.load_config(ckpt))


def _png(value: int) -> Image.Image:
  return Image.fromarray(np.full((40, 30, 3), value, np.uint8))


@pytest.fixture
def manifest(tmp_path):
  """12 examples; #3 is corrupt and #5 is missing."""
  lines = []
  for i in range(12):
    name = f"{i}.png"
    if i == 3:
      (tmp_path / name).write_bytes(b"not a png")
    elif i != 5:
      _png(10 * i).save(tmp_path / name)
    lines.append(json.dumps({"image": name, "caption": "red cat " * (i % 4 + 1)}))
  path = tmp_path / "train.jsonl"
  path.write_text("\n".join(lines))
  return str(path)


def test_bad_images_are_masked_and_counted(manifest, processor):
  src = make_source("jsonl", manifest)
  loader = make_loader(src, processor, batch_size=4, max_text_len=16, seed=0,
                       shuffle=False, num_epochs=1)
  batches = list(loader)
  assert len(batches) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.tolist() == [i not in (3, 5) for i in range(12)]
  b = batches[0]
  assert b["image"].shape == (4, 32, 32, 3) and b["tokens"].shape == (4, 16)
  assert b["loss_mask"][3].sum() == 0 and b["loss_mask"][2].sum() > 0
  np.testing.assert_allclose(b["image"][1], 10 / 127.5 - 1, atol=1e-6)


def test_truncation_is_flagged(manifest, processor):
  src = make_source("jsonl", manifest)
  lengths = [len(processor.encode(src[i]["prefix"], src[i]["suffix"]).tokens)
             for i in range(len(src))]
  assert min(lengths) < max(lengths)
  loader = make_loader(src, processor, batch_size=4, max_text_len=min(lengths),
                       seed=0, shuffle=False, num_epochs=1)
  truncated = np.concatenate([b["truncated"] for b in loader])
  assert truncated.tolist() == [n > min(lengths) for n in lengths]


def test_iterator_state_resumes_exactly(manifest, processor):
  def loader():
    return make_loader(make_source("jsonl", manifest), processor,
                       batch_size=4, max_text_len=16, seed=7)
  it = iter(loader())
  for _ in range(2):
    next(it)
  state = it.get_state()
  expected = [next(it)["tokens"] for _ in range(4)]  # Crosses an epoch.
  resumed = iter(loader())  # A fresh process would build a new loader.
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["tokens"], want)


def test_process_shards_are_disjoint(manifest, processor):
  """Two processes split every global batch: disjoint, together the valid
  examples once (3 and 5 are bad), and global batch g is the batch g one
  process with the global batch size sees."""
  load = lambda **kw: list(make_loader(
      make_source("jsonl", manifest), processor, max_text_len=16, seed=1,
      num_epochs=1, **kw))
  key = lambda b: [float(v) if ok else None   # Blank images of bad examples.
                   for v, ok in zip(b["image"][:, 0, 0, 0], b["valid"])]
  parts = [load(batch_size=2, process_index=i, process_count=2)
           for i in range(2)]
  one = load(batch_size=4)
  assert len(parts[0]) == len(parts[1]) == len(one) == 3
  seen = [[v for b in p for v in key(b) if v is not None] for p in parts]
  assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
  assert len(seen[0]) + len(seen[1]) == 10
  for g in range(3):
    together = key(parts[0][g]) + key(parts[1][g])
    assert sorted(together, key=str) == sorted(key(one[g]), key=str)


def test_parquet_source_reads_hf_datasets_layout(tmp_path, processor):
  images = []
  for i in range(6):
    buf = io.BytesIO()
    _png(40 * i).save(buf, format="PNG")
    images.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
  table = pa.table({"image": images, "text": [f"cat {i}" for i in range(6)]})
  pq.write_table(table, tmp_path / "a.parquet", row_group_size=4)
  src = make_source("parquet", str(tmp_path / "*.parquet"),
                    caption_column="text")
  assert len(src) == 6 and src[5]["suffix"] == "cat 5"
  loader = make_loader(src, processor, batch_size=3, max_text_len=12, seed=0,
                       shuffle=False, num_epochs=1)
  batch = next(iter(loader))
  assert batch["valid"].all()
  np.testing.assert_allclose(batch["image"][2], 80 / 127.5 - 1, atol=1e-6)
  with pytest.raises(ValueError, match="no column 'caption'.*caption_column"):
    make_source("parquet", str(tmp_path / "*.parquet"))


def test_bad_sources(tmp_path, processor):
  with pytest.raises(FileNotFoundError, match="train_path"):
    make_source("jsonl", str(tmp_path / "none.jsonl"))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"image": "a.png"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:1: needs 'caption'"):
    make_source("jsonl", str(bad))
  with pytest.raises(FileNotFoundError, match="no Parquet files"):
    make_source("parquet", str(tmp_path / "*.parquet"))
  with pytest.raises(ValueError, match="unknown data source 'csv'"):
    make_source("csv", "x")


# --- Parquet at scale: random access, cache bound, Arrow copy --------------


@pytest.fixture
def parquet_set(tmp_path):
  """(pattern, rows as pyarrow reads them, row groups): 3 files, 9 groups;
  row 4 of each file has empty bytes, so its path stands in."""
  folder = tmp_path / "pq"
  folder.mkdir()
  groups = 0
  for k, (n, group) in enumerate([(23, 5), (9, 4), (17, 17)]):
    images = [{"bytes": b"" if i == 4 else f"jpeg {k}/{i}".encode(),
               "path": f"{k}/{i}.jpg"} for i in range(n)]
    table = pa.table({"image": images, "caption": [f"cap {k}/{i}"
                                                   for i in range(n)]})
    pq.write_table(table, folder / f"part-{k}.parquet", row_group_size=group)
    groups += -(-n // group)
  rows = []
  for f in sorted(folder.glob("*.parquet")):
    for r in pq.read_table(f).to_pylist():
      rows.append((r["image"]["bytes"] or r["image"]["path"], r["caption"]))
  return str(folder / "*.parquet"), rows, groups


@pytest.fixture
def group_reads(monkeypatch):
  """Counts pq.ParquetFile.read_row_group calls, whoever makes them."""
  calls = []
  read = pq.ParquetFile.read_row_group

  def counted(self, i, *args, **kw):
    calls.append(i)
    return read(self, i, *args, **kw)
  monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
  return calls


def _shuffled(n, seed=0):
  return np.random.default_rng(seed).permutation(n).tolist()


@pytest.mark.parametrize("arrow", [False, True], ids=["parquet", "arrow"])
def test_parquet_random_access_matches_pyarrow(parquet_set, tmp_path, arrow):
  pattern, rows, groups = parquet_set
  src = make_source("parquet", pattern, prompt="describe",
                    parquet_arrow_dir=str(tmp_path / "arrow") if arrow else "")
  assert len(src) == len(rows) == 49
  assert repr(src) == f"ParquetSource({groups} row groups, n=49)"
  for i in _shuffled(len(rows)):
    ex = src[np.int64(i)]  # Grain hands numpy ints too.
    assert (ex["image"], ex["suffix"], ex["prefix"]) == (*rows[i], "describe")
  for bad in (-1, len(rows)):
    with pytest.raises(IndexError, match=f"row {bad} out of range"):
      src[bad]


def test_parquet_reads_each_row_group_once_when_it_fits(parquet_set,
                                                        group_reads):
  pattern, rows, groups = parquet_set
  src = make_source("parquet", pattern)
  for i in _shuffled(len(rows)) * 2:  # Two shuffled epochs.
    src[i]
  assert len(group_reads) == groups  # Old code: one read per group change.


def test_parquet_cache_stays_within_its_bound(parquet_set, group_reads):
  pattern, rows, groups = parquet_set
  largest = max(pq.ParquetFile(f).read_row_group(g).nbytes
                for f in sorted(glob.glob(pattern))
                for g in range(pq.ParquetFile(f).num_row_groups))
  for bound in (2.5 * largest, 0):  # 0: only the group in use is kept.
    group_reads.clear()
    src = make_source("parquet", pattern, parquet_cache_mb=bound / 2**20)
    for i in _shuffled(len(rows)):
      src[i]
      info = src.cache_info()
      assert info["bytes"] <= max(bound, largest) and info["groups"] >= 1
      assert bound or info["groups"] == 1
    assert info["reads"] == len(group_reads) > groups
    assert info["reads"] + info["hits"] == len(rows)


def test_parquet_threads_share_one_read_per_group(parquet_set, group_reads):
  from concurrent.futures import ThreadPoolExecutor
  pattern, rows, groups = parquet_set
  src = make_source("parquet", pattern)
  with ThreadPoolExecutor(8) as pool:  # Grain reads with a thread pool.
    got = list(pool.map(lambda i: src[i], range(len(rows))))
  assert [(g["image"], g["suffix"]) for g in got] == rows
  assert len(group_reads) == groups


@pytest.mark.parametrize("arrow", [False, True], ids=["parquet", "arrow"])
def test_parquet_source_pickles_without_its_caches(parquet_set, tmp_path,
                                                   arrow):
  import pickle
  pattern, rows, _ = parquet_set
  src = make_source("parquet", pattern,
                    parquet_arrow_dir=str(tmp_path / "arrow") if arrow else "")
  for i in range(len(rows)):
    src[i]
  blob = pickle.dumps(src)
  assert b"jpeg 0/1" not in blob  # No cached rows travel to the workers.
  copy = pickle.loads(blob)
  assert repr(copy) == repr(src) and copy.cache_info()["reads"] == 0
  assert [(copy[i]["image"], copy[i]["suffix"]) for i in _shuffled(49)] == [
      rows[i] for i in _shuffled(49)]


def test_parquet_arrow_copy_is_made_once_and_redone_when_stale(
    parquet_set, tmp_path, group_reads):
  pattern, rows, groups = parquet_set
  arrow_dir = str(tmp_path / "arrow")
  make_source("parquet", pattern, parquet_arrow_dir=arrow_dir)
  assert len(group_reads) == groups and len(os.listdir(arrow_dir)) == 3
  group_reads.clear()
  src = make_source("parquet", pattern, parquet_arrow_dir=arrow_dir)
  assert [src[i]["suffix"] for i in range(49)] == [r[1] for r in rows]
  assert not group_reads  # Served from the memory-mapped copy.
  first = sorted(glob.glob(pattern))[0]
  pq.write_table(pa.table({"image": [{"bytes": b"new", "path": "n.jpg"}],
                           "caption": ["new"]}), first)
  src = make_source("parquet", pattern, parquet_arrow_dir=arrow_dir)
  assert len(src) == 27 and src[0]["image"] == b"new"


def test_parquet_errors_name_the_problem(tmp_path):
  missing = str(tmp_path / "none-*.parquet")
  with pytest.raises(FileNotFoundError, match="none-\\*.parquet"):
    make_source("parquet", missing)
  path = tmp_path / "ints.parquet"
  pq.write_table(pa.table({"image": [1, 2], "caption": ["a", "b"]}), path)
  with pytest.raises(ValueError, match="ints.parquet: image column 'image' "
                     "is int64"):
    make_source("parquet", str(path))
  with pytest.raises(ValueError, match="ints.parquet has no column 'text'; "
                     "columns: \\['image', 'caption'\\]"):
    make_source("parquet", str(path), caption_column="text")
