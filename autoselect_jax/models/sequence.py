"""The LLM's input sequence: one container, its masks, and the next-token loss.

Every path that feeds a VLM's language model (the full model, the training
forward on gated tokens, validation with hard top-K, the deployed pruned
prefill, the demo's evaluation) builds a `Sequence` through the backbone's
`VLM.sequence` and reads it through the helpers here, so they cannot disagree
on masks, positions or which rows predict which text token.

A sequence is L = K + T rows: K visual embeddings, then T text tokens,
right-padded. `input_mask` marks real rows; `mask_ar` is 0 on rows of the
bidirectional prefix block and 1 on rows that attend causally (the suffix).
The text block is contiguous and starts at row `text_start` (static), so the
output of row `text_start + j - 1` predicts text token j.

Axes: B batch, L sequence rows, K visual rows, T text tokens, D width,
V vocabulary.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

__all__ = ["NEG_INF", "Sequence", "grid_index", "make_attention_mask",
           "positions_from_mask", "text_positions", "next_token_nll"]

NEG_INF = -2.0 ** 100  # Large, finite: a fully masked row stays NaN-free.


def make_attention_mask(input_mask, mask_ar):
  """Prefix-LM mask, (B, S), (B, S) -> (B, S, S) bool, True = may attend.

  Token i may attend to token j iff j is real and j's causal block index
  (cumsum of mask_ar) is <= i's. Runs of mask_ar == 0 form one bidirectional
  block; each mask_ar == 1 token opens a new block (plain causal attention).
  """
  blocks = jnp.cumsum(mask_ar, axis=1)
  allowed = blocks[:, None, :] <= blocks[:, :, None]
  return allowed & input_mask[:, None, :].astype(bool)


def positions_from_mask(input_mask):
  """(B, S) -> (B, S) int32 positions that count real tokens from 0.

  Padding after the last real token repeats its position.
  """
  return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=1) - 1, 0)


def text_positions(input_mask, start):
  """(B, T) right-padded text mask, scalar or (B,) start -> (B, T) int32.

  Real text token j sits at start + j; padding repeats the last real position.
  """
  start = jnp.asarray(start, jnp.int32)
  if start.ndim == 1:
    start = start[:, None]
  return start + positions_from_mask(input_mask)


def grid_index(batch: int, n: int):
  """(B, N) int32: 0..N-1 per example, the full model's visual positions."""
  return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))


@flax.struct.dataclass
class Sequence:
  """[K visual ; T text] as the LLM sees it (a pytree; `text_start` static)."""
  embeddings: jax.Array  # (B, L, D)
  positions: jax.Array   # (B, L) int32 RoPE positions
  input_mask: jax.Array  # (B, L) bool, real rows
  mask_ar: jax.Array     # (B, L) int32, 0 prefix block, 1 causal
  text_start: int = flax.struct.field(pytree_node=False)  # row of text token 0

  @property
  def length(self) -> int:
    return self.input_mask.shape[1]

  def attention_mask(self):
    """(B, L, L) bool: the prefix-LM mask of this sequence."""
    return make_attention_mask(self.input_mask, self.mask_ar)

  def text_predictors(self, hidden, num_text: int):
    """hidden (B, L, D) -> (B, T, D): the rows whose outputs predict text
    tokens 0..T-1 (row text_start + j - 1 predicts token j)."""
    if self.text_start < 1:
      raise ValueError("the first text token has no predicting row "
                       f"(text_start={self.text_start})")
    if self.text_start + num_text > hidden.shape[1]:
      raise ValueError(f"{num_text} text tokens from row {self.text_start} "
                       f"overrun the sequence of {hidden.shape[1]} rows")
    return hidden[:, self.text_start - 1:self.text_start - 1 + num_text]

  def last_real_row(self):
    """(B,) int32: the index of each example's last real row."""
    rev = jnp.argmax(self.input_mask[:, ::-1], axis=1)
    return (self.length - 1 - rev).astype(jnp.int32)


def next_token_nll(logits, tokens, weights):
  """Summed next-token negative log-likelihood and the number of targets.

  Args:
    logits: (B, T, V), row j predicting tokens[:, j] (`text_predictors`).
    tokens: (B, T) int targets.
    weights: (B, T) bool or 0/1: which targets count (suffix and real).

  Returns:
    (sum of weighted NLL, sum of weights), float32 scalars.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32),
                             axis=-1)[..., 0]                  # (B, T)
  w = weights.astype(jnp.float32)
  return jnp.sum(w * nll), jnp.sum(w)
