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

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoselect_jax.models.sequence import NEG_INF

__all__ = ["LastAttention", "SelfAttention"]


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
      logits = jnp.einsum("bqhe,bkhe->bhqk", q, k,
                          preferred_element_type=jnp.float32)  # (B,H,N,N)
      if mask is not None:
        logits = jnp.where(mask[:, None], logits, NEG_INF)
      probs = jax.nn.softmax(logits, axis=-1)                  # float32
      if return_attention:
        stats = LastAttention(received=jnp.mean(probs, axis=(1, 2)),
                              keys=k.reshape(*k.shape[:2], d))
      out = jnp.einsum("bhqk,bkhe->bqhe", probs.astype(self.dtype), v)
    init = (nn.initializers.zeros if self.zero_init_out
            else nn.initializers.lecun_normal())
    out = nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype,
                          kernel_init=init, name="out")(out)
    return (out, stats) if return_attention else out
