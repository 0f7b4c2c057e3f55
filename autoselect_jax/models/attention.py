"""ViT-style multi-head self-attention, shared by the vision encoders and the
AutoSelect Scorer / Denoiser (one implementation, one masking constant).

Parameter names follow big_vision / flax: query, key, value, out
(DenseGeneral, kernels (D, H, E) and (H, E, D)).

`SelfAttention(..., return_attention=True)` also returns `LastAttention`:
what the training-free baselines (`baselines.attention_select`,
`baselines.visionzip_select`) read from the vision encoder's last block.

Axes: B batch, N tokens, D width, H heads, E head dim.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoselect_jax.models.sequence import NEG_INF

__all__ = ["LastAttention", "SelfAttention", "attend"]


class LastAttention(NamedTuple):
  """Statistics of one self-attention (the vision encoder reports its last
  block's).

  received: (B, N) float32, the attention each token receives: the softmax
    probabilities averaged over heads and over the N query rows (SigLIP has no
    CLS token to read a row of), so each row sums to 1.
  keys: (B, N, D), the key projection's output, heads concatenated
    (head h is keys[..., h * E:(h + 1) * E]).
  """
  received: jax.Array
  keys: jax.Array


# Query rows per block of `attend` (see its docstring) in every SelfAttention
# without its own `query_chunk`; 0 is dense attention (one block). Read when
# a function is traced: `bench --query-chunk` sets it before tracing.
QUERY_CHUNK = 256


def _attend_block(q, k, v, mask, rows):
  """Attention of some query rows against every key, heads leading.

  q: (B, H, Q, E), already scaled; k, v: (B, H, N, E); mask: bool (B, Q, N)
  or None; rows: (Q,) float32 weights of the query rows in the attention
  received (1 real, 0 padding). Returns (out (B, H, Q, E) in v's dtype,
  received (B, N) float32: the probabilities summed over heads and rows).
  """
  logits = jnp.einsum("bhqe,bhke->bhqk", q, k,
                      preferred_element_type=jnp.float32)      # (B,H,Q,N)
  if mask is not None:
    logits = jnp.where(mask[:, None], logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1)                      # float32
  out = jnp.einsum("bhqk,bhke->bhqe", probs.astype(v.dtype), v)
  return out, jnp.sum(probs * rows[:, None], axis=(1, 2))


def attend(q, k, v, mask=None, *, query_chunk: int = QUERY_CHUNK):
  """Softmax attention, `query_chunk` query rows at a time (0: all at once).

  q: (B, N, H, E), already scaled; k, v: (B, N, H, E); mask: optional bool
  (B, N, N), True = may attend. Returns (out (B, N, H, E), the attention each
  key receives: probabilities averaged over heads and query rows, (B, N)
  float32). XLA drops `received` when the caller does not use it.

  Heads lead inside (q, k, v as (B, H, N, E)): both products are then plain
  batched matmuls over (B, H). With tokens leading, XLA CPU transposed the
  (B, H, Q, N) probabilities for the second product on every call, and
  attention at N = 4096 was 2-4x slower (docs/benchmark.md).

  For N > query_chunk the queries go through `lax.map` in blocks: each row's
  softmax is computed exactly as in one dense call, so the output is the
  same, but at most a (B, H, query_chunk, N) block of scores is live instead
  of (B, H, N, N): 64 MiB instead of 1 GiB per layer at N = 4096, H = 16 in
  float32, whether or not the backend fuses dense attention (XLA CPU does;
  a GPU without a fused kernel writes the scores out). N not divisible by
  the chunk pads the last block's queries; padded rows are dropped and not
  counted.
  """
  b, n, h, e = q.shape
  heads = lambda x: jnp.swapaxes(x, 1, 2)                      # (B,H,N,E)
  k, v = heads(k), heads(v)
  if query_chunk <= 0 or n <= query_chunk:  # One block: dense.
    out, received = _attend_block(heads(q), k, v, mask,
                                  jnp.ones((n,), jnp.float32))
    return heads(out), received / (h * n)
  blocks = -(-n // query_chunk)
  pad = blocks * query_chunk - n
  qs = jnp.moveaxis(jnp.pad(heads(q), [(0, 0), (0, 0), (0, pad), (0, 0)])
                    .reshape(b, h, blocks, query_chunk, e), 2, 0)
  ms = None if mask is None else jnp.moveaxis(
      jnp.pad(mask, [(0, 0), (0, pad), (0, 0)], constant_values=True)
      .reshape(b, blocks, query_chunk, n), 1, 0)              # (C,B,Q,N)
  rows = (jnp.arange(blocks * query_chunk) < n).astype(jnp.float32)
  outs, received = jax.lax.map(
      lambda x: _attend_block(x[0], k, v, x[2], x[1]),
      (qs, rows.reshape(blocks, query_chunk), ms))            # (C,B,H,Q,E)
  out = jnp.moveaxis(outs, 0, 2).reshape(b, h, blocks * query_chunk, e)
  return heads(out[:, :, :n]), jnp.sum(received, axis=0) / (h * n)


class SelfAttention(nn.Module):
  """Multi-head self-attention (ViT style); logits and softmax in float32.

  The one attention of SigLIP and of the AutoSelect Scorer and Denoiser.
  `self_only=True` is attention under the identity mask (token i attends only
  to itself): the softmax over one allowed key is exactly 1, so the output is
  out(value(x_i)), computed that way in O(N) and without query / key
  projections (under that mask they would get no gradient).
  `zero_init_out` starts the output projection at zero.
  With `return_attention=True` the call returns `(out, LastAttention)`;
  the output is the same either way.
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  self_only: bool = False
  zero_init_out: bool = False
  # Query rows per block (see `attend`); None reads QUERY_CHUNK at trace time.
  query_chunk: Optional[int] = None

  @nn.compact
  def __call__(self, x, mask=None, return_attention: bool = False):
    """x: (B, N, D); mask: optional bool (B, N, N), True = may attend."""
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads="
                       f"{self.num_heads}")
    e = d // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, e), dtype=self.dtype,
                                         name=name)
    if self.self_only:
      if mask is not None:
        raise ValueError("a self_only attention takes no mask")
      if return_attention:
        raise ValueError("a self_only attention has no attention to return")
      out = dense("value")(x)                                  # (B, N, H, E)
    else:
      q = dense("query")(x) * jnp.asarray(e ** -0.5, self.dtype)  # (B,N,H,E)
      k, v = dense("key")(x), dense("value")(x)
      chunk = QUERY_CHUNK if self.query_chunk is None else self.query_chunk
      out, received = attend(q, k, v, mask, query_chunk=chunk)
      if return_attention:
        stats = LastAttention(received=received,
                              keys=k.reshape(*k.shape[:2], d))
    init = (nn.initializers.zeros if self.zero_init_out
            else nn.initializers.lecun_normal())
    out = nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype,
                          kernel_init=init, name="out")(out)
    return (out, stats) if return_attention else out
