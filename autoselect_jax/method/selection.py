"""Hard top-K selection for inference: indices, gather, position ids.

Axes: B batch, N visual tokens, K kept tokens, T text tokens, D width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from autoselect_jax.method.lapsum import _check_k

__all__ = ["POSITION_POLICIES", "select_topk", "gather_tokens",
           "kept_positions"]

POSITION_POLICIES = ("original", "packed")


def select_topk(scores, k: int):
  """Indices of the k highest scores, in ascending (original) order.

  Args:
    scores: (B, N) float.
    k: Python int in [1, N].

  Returns:
    (B, K) int32, k distinct indices per row, sorted ascending. Among equal
    scores the lower index wins.
  """
  if scores.ndim != 2:
    raise ValueError(f"scores must be (B, N), got shape {scores.shape}")
  k = _check_k(k, scores.shape[1])
  _, idx = jax.lax.top_k(scores, k)                 # (B, K), by score
  return jnp.sort(idx, axis=-1).astype(jnp.int32)


def gather_tokens(x, idx):
  """(B, N, D), (B, K) int -> (B, K, D): x[b, idx[b, j]]."""
  if x.ndim != 3:
    raise ValueError(f"x must be (B, N, D), got shape {x.shape}")
  if idx.ndim != 2 or idx.shape[0] != x.shape[0]:
    raise ValueError(f"idx must be (B, K) with B = {x.shape[0]}, got shape "
                     f"{idx.shape}")
  return jnp.take_along_axis(x, idx[..., None], axis=1)


def kept_positions(idx, n_visual: int, num_text: int, policy: str = "original",
                   text_mask=None):
  """RoPE positions of the sequence [kept visual (K) ; text (T)].

  Args:
    idx: (B, K) int, the kept indices sorted ascending (`select_topk`).
    n_visual: N, the size of the full visual grid.
    num_text: T.
    policy: "original": kept token j sits at idx[j], its place in the full
      grid, and the text follows the full layout (starts at N); "packed":
      kept tokens at 0..K-1, text from K.
    text_mask: optional (B, T) bool, the text's input_mask. Given it, text
      positions count real text tokens as `positions_from_mask` does on the
      full sequence (padding repeats the last real position); without it they
      are consecutive.

  Returns:
    (B, K + T) int32.
  """
  if policy not in POSITION_POLICIES:
    raise ValueError(f"position policy must be one of {POSITION_POLICIES}, "
                     f"got {policy!r}")
  if idx.ndim != 2:
    raise ValueError(f"idx must be (B, K), got shape {idx.shape}")
  b, k = idx.shape
  if not 1 <= k <= n_visual:
    raise ValueError(f"need 1 <= K <= N = {n_visual}, got K = {k}")
  if num_text < 0:
    raise ValueError(f"num_text must be >= 0, got {num_text}")
  if text_mask is None:
    text = jnp.broadcast_to(jnp.arange(num_text, dtype=jnp.int32),
                            (b, num_text))
  else:
    if text_mask.shape != (b, num_text):
      raise ValueError(f"text_mask must be {(b, num_text)}, got "
                       f"{text_mask.shape}")
    text = jnp.cumsum(text_mask.astype(jnp.int32), axis=1) - 1
  if policy == "original":
    visual, start = idx.astype(jnp.int32), n_visual
  else:
    visual = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
    start = k
  return jnp.concatenate([visual, text + start], axis=1)
