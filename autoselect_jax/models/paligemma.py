"""PaliGemma = SigLIP + linear projector + Gemma, and the backbone-agnostic `VLM` view.

Sequence layout (as in big_vision and HF): [image tokens][<bos> prefix "\\n"]
[suffix <eos>][padding], built in one place, `image_text_sequence`.
`input_mask` marks real tokens; `mask_ar` is 1 on tokens that attend causally
(the suffix) and 0 on the prefix block (image + prefix), which attends
bidirectionally. Positions count real tokens from 0 (HF counts from 1; RoPE
only sees differences, so logits agree).

Axes: B batch, N visual tokens, T text tokens, S = sequence / cache slots,
Dv vision width, D LLM width, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoselect_jax.models.config import PaliGemmaConfig
from autoselect_jax.models.gemma import Gemma
from autoselect_jax.models.sequence import Sequence, grid_index, text_positions
from autoselect_jax.models.siglip import SiglipVision

Params = Any


def image_text_sequence(visual, visual_index, span: int, text, input_mask,
                        mask_ar) -> Sequence:
  """PaliGemma's LLM input: [visual ; text], the one place it is laid out.

  Args:
    visual: (B, K, D) projected visual embeddings, any K >= 1 (all N of the
      full model, or a selection).
    visual_index: (B, K) int, each visual row's position within the visual
      block, in [0, span).
    span: the number of positions the visual block occupies; the text starts
      at position `span`. The full model: the N grid indices and span N. A
      selection keeps grid indices and span N ("original") or numbers its
      tokens 0..K-1 with span K ("packed").
    text: (B, T, D) text embeddings (`embed_text`), right-padded.
    input_mask, mask_ar: (B, T) for the text. Visual rows are real and belong
      to the bidirectional prefix block.

  Returns:
    A `Sequence` of L = K + T rows with text_start = K.
  """
  b, k = visual.shape[:2]
  t = text.shape[1]
  if visual_index.shape != (b, k):
    raise ValueError(f"visual_index must be {(b, k)}, got "
                     f"{visual_index.shape}")
  if input_mask.shape != (b, t) or mask_ar.shape != (b, t):
    raise ValueError(f"input_mask {input_mask.shape} and mask_ar "
                     f"{mask_ar.shape} must be (B, T) = {(b, t)}")
  return Sequence(
      embeddings=jnp.concatenate([visual, text.astype(visual.dtype)], 1),
      positions=jnp.concatenate(
          [visual_index.astype(jnp.int32), text_positions(input_mask, span)],
          1),
      input_mask=jnp.concatenate([jnp.ones((b, k), bool),
                                  input_mask.astype(bool)], 1),
      mask_ar=jnp.concatenate([jnp.zeros((b, k), jnp.int32),
                               mask_ar.astype(jnp.int32)], 1),
      text_start=k)


class PaliGemma(nn.Module):
  config: PaliGemmaConfig
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  unroll: int = 1  # Layer-scan unroll (True: fully), for speed only.
  scan_layers: bool = True  # False: per-layer params (`unstack_layers`).

  def setup(self):
    c = self.config
    self.img = SiglipVision(c.vision, c.llm.width, self.dtype, self.remat,
                            self.unroll, self.scan_layers)
    self.llm = Gemma(c.llm, self.dtype, self.remat, self.unroll,
                     self.scan_layers)

  def encode_image(self, images, **kwargs):
    """(B, H, W, 3) in [-1, 1] -> (B, N, Dv); kwargs go to the encoder."""
    return self.img(images, **kwargs)

  def project(self, x):
    """(B, N', Dv) -> (B, N', D), for any number N' of visual tokens."""
    return self.img.project(x)

  def embed_text(self, tokens):
    """(B, T) int -> (B, T, D)."""
    return self.llm.embed(tokens)

  def run_llm(self, x, positions, mask, cache=None, cache_index=None,
              **kwargs):
    return self.llm(x, positions, mask, cache, cache_index, **kwargs)

  def logits(self, hidden):
    return self.llm.logits(hidden)

  def __call__(self, images, tokens, input_mask, mask_ar):
    """Whole-sequence forward: logits (B, N + T, V) for [image; text].

    input_mask, mask_ar: (B, T) for the text; image tokens are always real and
    part of the bidirectional prefix.
    """
    img = self.project(self.encode_image(images))
    b, n = img.shape[:2]
    seq = image_text_sequence(img, grid_index(b, n), n,
                              self.embed_text(tokens), input_mask, mask_ar)
    hidden, _ = self.run_llm(seq.embeddings, seq.positions,
                             seq.attention_mask())
    return self.logits(hidden)


@dataclasses.dataclass(frozen=True)
class VLM:
  """What the method, training and inference code may know about a VLM.

  Pure functions of an explicit parameter tree (the inner dict, without the
  'params' collection key). A new backbone provides the same functions:
  encode_image, project, sequence, run_llm, logits (embed_text and forward
  are conveniences).
  """
  config: PaliGemmaConfig
  dtype: Any = jnp.float32
  remat: bool = False
  unroll: int = 1
  scan_layers: bool = True

  @property
  def module(self) -> PaliGemma:
    return PaliGemma(self.config, self.dtype, self.remat, self.unroll,
                     self.scan_layers)

  @property
  def num_visual_tokens(self) -> int:
    return self.config.vision.num_tokens

  @property
  def visual_width(self) -> int:
    return self.config.vision.width

  @property
  def llm_width(self) -> int:
    return self.config.llm.width

  @property
  def image_size(self) -> int:
    return self.config.vision.image_size

  def _apply(self, params, method, *args, **kwargs):
    return self.module.apply({"params": params}, *args, method=method,
                             **kwargs)

  def encode_image(self, params, images, **kwargs):
    """(B, H, W, 3) in [-1, 1] -> (B, N, Dv); kwargs: the encoder's options."""
    return self._apply(params, PaliGemma.encode_image, images, **kwargs)

  def project(self, params, x):
    return self._apply(params, PaliGemma.project, x)

  def embed_text(self, params, tokens):
    return self._apply(params, PaliGemma.embed_text, tokens)

  def sequence(self, params, visual, visual_index, span: int, tokens,
               input_mask, mask_ar) -> Sequence:
    """The LLM input for projected visual rows (B, K, D) at `visual_index`
    (B, K) within a visual block of `span` positions, and text (B, T); see
    `image_text_sequence`."""
    return image_text_sequence(visual, visual_index, span,
                               self.embed_text(params, tokens), input_mask,
                               mask_ar)

  def run_llm(self, params, x, positions, mask, cache=None, cache_index=None,
              **kwargs):
    """-> (hidden (B, T, D), KVCache); see `Gemma.__call__` (kwargs: the
    decoder's options)."""
    return self._apply(params, PaliGemma.run_llm, x, positions, mask, cache,
                       cache_index, **kwargs)

  def logits(self, params, hidden):
    return self._apply(params, PaliGemma.logits, hidden)

  def forward(self, params, images, tokens, input_mask, mask_ar):
    return self._apply(params, PaliGemma.__call__, images, tokens, input_mask,
                       mask_ar)

  def _dummy_inputs(self):
    s = self.image_size
    return (jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, 2), jnp.int32),
            jnp.ones((1, 2), bool), jnp.zeros((1, 2), jnp.int32))

  def init_params(self, rng) -> Params:
    return self.module.init(rng, *self._dummy_inputs())["params"]

  def abstract_params(self) -> Params:
    """Shapes and dtypes of the parameter tree, without allocating it."""
    return jax.eval_shape(self.init_params, jax.random.key(0))


def unstack_layers(params) -> Params:
  """Scan-layout params (layers stacked on axis 0, as checkpoints store them)
  -> one subtree per layer, for `VLM(..., scan_layers=False)`.

  Run once, outside jit: it copies every layer out of its stack, which a
  scanned model otherwise does inside every call.
  """
  def split(stacked, prefix):
    depth = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    return {f"{prefix}_{i}": jax.tree_util.tree_map(lambda a: a[i], stacked)
            for i in range(depth)}

  if "layers" not in params["llm"]:
    raise ValueError("params are not in the stacked (scan) layout: "
                     "llm/layers is missing")
  llm = dict(params["llm"])
  llm.update(split(llm.pop("layers"), "layers"))
  enc = dict(params["img"]["Transformer"])
  enc.update(split(enc.pop("encoderblock"), "encoderblock"))
  return {**params, "llm": llm,
          "img": {**params["img"], "Transformer": enc}}
