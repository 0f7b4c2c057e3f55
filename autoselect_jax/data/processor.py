"""Prompts and images exactly as HF's PaliGemmaProcessor builds them.

Text: [<bos>] prefix "\\n" | suffix [<eos>]. The image tokens are not part of
the text here: the model places N visual embeddings in front of it. The prefix
block (image + prefix) attends bidirectionally (mask_ar 0), the suffix
causally (mask_ar 1), and the loss covers the suffix only.

Images: RGB, resized to the model size with PIL bicubic, scaled to [-1, 1].
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import numpy as np
from PIL import Image

from autoselect_jax.models.config import PaliGemmaConfig

IMAGE_TOKEN = "<image>"


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One example's text: lists of equal length."""
  tokens: list[int]
  mask_ar: list[int]    # 0 prefix (bidirectional), 1 suffix (causal)
  loss_mask: list[int]  # 1 where the token is a target (the suffix)


@dataclasses.dataclass(frozen=True)
class TextBatch:
  """Right-padded text batch, numpy arrays (B, T)."""
  tokens: np.ndarray
  input_mask: np.ndarray
  mask_ar: np.ndarray
  loss_mask: np.ndarray
  num_truncated: int = 0


def load_tokenizer(folder: str):
  from transformers import AutoTokenizer
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
  return AutoTokenizer.from_pretrained(folder)


class Processor:
  """Tokenizer + image preprocessing for one PaliGemma config."""

  def __init__(self, tokenizer, config: PaliGemmaConfig):
    self.tokenizer = tokenizer
    self.config = config
    self.image_size = config.vision.image_size
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
           "pad": tokenizer.pad_token_id}
    for name, tid in ids.items():
      want = getattr(config, f"{name}_token_id")
      if tid is None:
        raise ValueError(f"tokenizer has no {name} token")
      if tid != want:
        raise ValueError(f"tokenizer's {name} id {tid} differs from the model "
                         f"config's {name}_token_id={want}")
    self.bos_id, self.eos_id, self.pad_id = ids["bos"], ids["eos"], ids["pad"]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id is not None and image_id != tokenizer.unk_token_id and (
        image_id != config.image_token_id):
      raise ValueError(f"tokenizer's {IMAGE_TOKEN} id {image_id} differs from "
                       f"the model config's image_token_id="
                       f"{config.image_token_id}")
    self.image_token_id = config.image_token_id

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config: PaliGemmaConfig):
    return cls(load_tokenizer(ckpt_dir), config)

  # --- text -----------------------------------------------------------------
  def _ids(self, text: str) -> list[int]:
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def encode(self, prefix: str, suffix: str | None = None) -> Encoded:
    """Text of one example, as the HF processor tokenizes it."""
    pre = self._ids(self.tokenizer.bos_token + prefix + "\n")
    suf = [] if suffix is None else self._ids(suffix + self.tokenizer.eos_token)
    return Encoded(tokens=pre + suf, mask_ar=[0] * len(pre) + [1] * len(suf),
                   loss_mask=[0] * len(pre) + [1] * len(suf))

  def batch(self, examples: Sequence[Encoded], length: int | None = None
            ) -> TextBatch:
    """Right-pads to `length` (default: longest); longer texts are truncated
    and counted (a warning is logged)."""
    longest = max(len(e.tokens) for e in examples)
    length = longest if length is None else length
    b = len(examples)
    out = {k: np.zeros((b, length), np.int32)
           for k in ("tokens", "input_mask", "mask_ar", "loss_mask")}
    out["tokens"][:] = self.pad_id
    truncated = 0
    for i, e in enumerate(examples):
      n = min(len(e.tokens), length)
      truncated += len(e.tokens) > length
      out["tokens"][i, :n] = e.tokens[:n]
      out["input_mask"][i, :n] = 1
      out["mask_ar"][i, :n] = e.mask_ar[:n]
      out["loss_mask"][i, :n] = e.loss_mask[:n]
    if truncated:
      logging.warning("truncated %d of %d texts to %d tokens", truncated, b,
                      length)
    out["input_mask"] = out["input_mask"].astype(bool)
    return TextBatch(**out, num_truncated=truncated)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of generated ids, up to (excluding) the first <eos>."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  # --- images ---------------------------------------------------------------
  def image(self, image) -> np.ndarray:
    """PIL image, path, or uint8 array (H, W, 3) -> float32 (S, S, 3) in [-1, 1]."""
    return preprocess_image(image, self.image_size)


def preprocess_image(image, size: int) -> np.ndarray:
  if isinstance(image, (str, os.PathLike)):
    try:
      with Image.open(image) as f:
        image = f.convert("RGB")
    except FileNotFoundError:
      raise FileNotFoundError(f"image {image} does not exist") from None
    except OSError as e:
      raise ValueError(f"cannot read image {image}: {e}") from None
  elif isinstance(image, np.ndarray):
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError("image arrays must be uint8 (H, W, 3), got "
                       f"{image.dtype} {image.shape}")
    image = Image.fromarray(image)
  elif not isinstance(image, Image.Image):
    raise TypeError(f"unsupported image type {type(image).__name__}")
  image = image.convert("RGB")
  if image.size != (size, size):
    image = image.resize((size, size), resample=Image.Resampling.BICUBIC)
  x = np.asarray(image, np.float32) * np.float32(1 / 255)
  return (x - np.float32(0.5)) / np.float32(0.5)
