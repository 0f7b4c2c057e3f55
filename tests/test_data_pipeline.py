"""Grain input: JSONL and Parquet sources, bad images counted, exact resume."""

from __future__ import annotations

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
  seen = []
  for i in range(2):
    loader = make_loader(make_source("jsonl", manifest), processor,
                         batch_size=2, max_text_len=16, seed=1, num_epochs=1,
                         process_index=i, process_count=2)
    seen.append({tuple(t) for b in loader for t in b["image"][:, 0, 0, :1]})
  assert seen[0] and seen[1] and not seen[0] & seen[1]


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
