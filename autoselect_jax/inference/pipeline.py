"""A notebook-friendly generation API over a converted checkpoint.

  pipe = Pipeline.from_checkpoint("ckpt/")
  pipe.generate(["cat.jpg"], ["caption en"], max_new_tokens=20)
  -> [{"ids": [...], "text": "..."}]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autoselect_jax.checkpoints import store
from autoselect_jax.data.processor import Processor
from autoselect_jax.inference.decode import full_prefix, greedy_decode
from autoselect_jax.models import VLM

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def bucket_length(n: int, bucket: int = 16) -> int:
  """Prompt lengths are padded up to a multiple of `bucket` (one compile each)."""
  return max(bucket, int(math.ceil(n / bucket)) * bucket)


@dataclasses.dataclass
class Pipeline:
  vlm: VLM
  params: Any
  processor: Processor
  bucket: int = 16

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, dtype: str = "float32"):
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    config = store.load_config(ckpt_dir)
    params = store.load_params(ckpt_dir, config)
    return cls(VLM(config, DTYPES[dtype]), params,
               Processor.from_checkpoint(ckpt_dir, config))

  def generate(self, images: Sequence, prompts: Sequence[str], *,
               max_new_tokens: int = 32) -> list[dict]:
    """Greedy answers, one per (image, prompt) pair."""
    if len(images) != len(prompts):
      raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
      raise ValueError("nothing to generate: no images")
    if max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    proc = self.processor
    pixels = np.stack([proc.image(im) for im in images])
    encoded = [proc.encode(p) for p in prompts]
    length = bucket_length(max(len(e.tokens) for e in encoded), self.bucket)
    text = proc.batch(encoded, length)
    prefix = _full_prefix(self.vlm, self.params, pixels, text.tokens,
                          text.input_mask, text.mask_ar)
    ids = np.asarray(greedy_decode(self.vlm, self.params, prefix,
                                   max_new_tokens=max_new_tokens,
                                   eos_id=proc.eos_id, pad_id=proc.pad_id))
    results = []
    for row in ids.tolist():
      if proc.eos_id in row:
        row = row[:row.index(proc.eos_id) + 1]
      results.append({"ids": row, "text": proc.decode(row)})
    return results


_full_prefix = jax.jit(full_prefix, static_argnums=0)
