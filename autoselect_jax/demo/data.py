"""Shapes-task examples as model-ready numpy arrays, and the demo's splits.

Training examples are indices [0, n) of the stream `data_seed`; held-out
examples start at `EVAL_START`, far beyond any training set, so the two never
overlap and both can be regenerated from (seed, index) alone.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from autoselect_jax.demo import synthetic
from autoselect_jax.data.processor import Processor

PROMPT = synthetic.PROMPT
EVAL_START = 10_000_000


def train_examples(n: int, data_seed: int = 0,
                   spec: synthetic.TaskSpec = synthetic.TaskSpec()):
  return synthetic.make_examples(data_seed, range(n), spec)


def eval_examples(n: int, data_seed: int = 0,
                  spec: synthetic.TaskSpec = synthetic.TaskSpec()):
  return synthetic.make_examples(data_seed, range(EVAL_START, EVAL_START + n),
                                 spec)


def scale_images(images):
  """uint8 (..., S, S, 3) -> float32 in [-1, 1], the ops of `Processor.image`.

  numpy or jax; inside jit it keeps uint8 batches small on the way in.
  """
  xp = np if isinstance(images, np.ndarray) else jnp
  x = images.astype(xp.float32) * xp.float32(1 / 255)
  return (x - xp.float32(0.5)) / xp.float32(0.5)


def encode_examples(examples: Sequence[synthetic.Example], processor: Processor,
                    text_len: int | None = None, prompt: str = PROMPT
                    ) -> dict[str, np.ndarray]:
  """Examples -> numpy arrays, images kept uint8 (scale with `scale_images`).

  Returns images uint8 (B, S, S, 3); tokens, input_mask, mask_ar, loss_mask
  (B, T) (prefix "prompt", suffix caption, right-padded to `text_len`, default
  the longest); object_mask bool (B, N).
  """
  if not examples:
    raise ValueError("no examples")
  size = processor.image_size
  images = np.stack([e.image for e in examples])
  if images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
    raise ValueError(f"examples hold {images.dtype} images of shape "
                     f"{images.shape[1:]}; the model needs uint8 "
                     f"({size}, {size}, 3)")
  cache = {}  # Captions repeat a lot; tokenize each once.
  encoded = []
  for e in examples:
    if e.caption not in cache:
      cache[e.caption] = processor.encode(prompt, e.caption)
    encoded.append(cache[e.caption])
  text = processor.batch(encoded, text_len)
  if text.num_truncated:
    raise ValueError(f"{text.num_truncated} texts are longer than "
                     f"text_len={text_len}")
  return dict(images=images, tokens=text.tokens, input_mask=text.input_mask,
              mask_ar=text.mask_ar, loss_mask=text.loss_mask.astype(bool),
              object_mask=synthetic.object_mask(
                  examples, processor.config.num_image_tokens))
