"""Grain input pipeline: shuffle, shard per process, decode, tokenize, batch.

Batches are dicts of numpy arrays with static shapes:
  image (b, S, S, 3) float32 in [-1, 1]; tokens, input_mask, mask_ar,
  loss_mask (b, T); valid (b,) bool; truncated (b,) bool
where b is the per-process batch. An example whose image is missing or
corrupt stays in the batch with valid=False (a blank image and no loss), so
shapes never change and the metrics count it exactly.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import grain.python as grain
import numpy as np
from PIL import Image

from autoselect_jax.data.processor import Processor, preprocess_image
from autoselect_jax.data.sampler import GlobalBatchSampler


class Preprocess(grain.MapTransform):
  """Example dict -> fixed-shape arrays; never raises on a bad image."""

  def __init__(self, processor: Processor, max_text_len: int):
    self.processor = processor
    self.max_text_len = max_text_len

  def map(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    size = self.processor.image_size
    valid = True
    try:
      image = example["image"]
      if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as f:
          image = f.convert("RGB")
      pixels = preprocess_image(image, size)
    except (OSError, ValueError, TypeError) as e:  # Missing, corrupt, odd.
      logging.warning("skipping example with a bad image: %s", e)
      pixels, valid = np.zeros((size, size, 3), np.float32), False
    enc = self.processor.encode(example["prefix"], example["suffix"])
    text = self.processor.batch([enc], self.max_text_len)
    out = {k: getattr(text, k)[0] for k in ("tokens", "input_mask", "mask_ar",
                                            "loss_mask")}
    if not valid:
      out["loss_mask"] = np.zeros_like(out["loss_mask"])
    out.update(image=pixels, valid=np.bool_(valid),
               truncated=np.bool_(text.num_truncated > 0))
    return out


def make_loader(source, processor: Processor, *, batch_size: int,
                max_text_len: int, seed: int, shuffle: bool = True,
                num_epochs: int | None = None, worker_count: int = 0,
                process_index: int = 0, process_count: int = 1
                ) -> grain.DataLoader:
  """A Grain DataLoader of this process's slice of every global batch;
  `batch_size` is per process (the global batch is batch_size x processes).

  Global batch b holds the same examples for any number of processes
  (`sampler.GlobalBatchSampler`), and the order depends only on (seed,
  record count), so a restored iterator state replays exactly the examples an
  uninterrupted run would have seen.
  """
  global_batch = batch_size * process_count
  if len(source) < global_batch:
    raise ValueError(f"data source holds {len(source)} examples, fewer than "
                     f"one global batch ({global_batch})")
  sampler = GlobalBatchSampler(len(source), global_batch=global_batch,
                               process_index=process_index,
                               process_count=process_count, shuffle=shuffle,
                               seed=seed, num_epochs=num_epochs)
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[Preprocess(processor, max_text_len),
                  grain.Batch(batch_size, drop_remainder=True)],
      worker_count=worker_count)


def make_source(kind: str, path, **kw):
  """`jsonl` | `parquet` source from config values.

  Parquet also takes `parquet_cache_mb` (row-group cache per process) and
  `parquet_arrow_dir` (convert once to memory-mapped Arrow files there).
  """
  from autoselect_jax.data import sources
  if kind == "jsonl":
    return sources.JsonlSource(path, prompt=kw.get("prompt", "caption en"),
                               caption_key=kw.get("caption_column", "caption"),
                               image_key=kw.get("image_column", "image"))
  if kind == "parquet":  # Cache per process; arrow_dir: see ParquetSource.
    return sources.ParquetSource(
        path, prompt=kw.get("prompt", "caption en"),
        image_column=kw.get("image_column", "image"),
        caption_column=kw.get("caption_column", "caption"),
        cache_bytes=int(kw.get("parquet_cache_mb", 256) * 2 ** 20),
        arrow_dir=kw.get("parquet_arrow_dir") or None)
  raise ValueError(f"unknown data source {kind!r}; use 'jsonl' or 'parquet' "
                   "(or a client's own sources, see training/client.py)")

