"""The trainable AutoSelect modules: `Scorer` and `Denoiser` (Flax linen).

Both act on the vision encoder's output tokens (B, N, Dv) and carry no
positional embedding: the Scorer is equivariant to permutations of the tokens,
the Denoiser transforms every token on its own.

Axes: B batch, N visual tokens, D width, H heads, E head dim, F MLP width.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Attention", "Block", "Scorer", "Denoiser"]

_NEG_INF = -2.0 ** 100  # Large, finite: a fully masked row stays NaN-free.


class Attention(nn.Module):
  """Multi-head self-attention; logits and softmax in float32.

  `self_only=True` is attention under the identity mask (token i attends only
  to itself). The softmax over one allowed key is exactly 1, so the output is
  out(value(x_i)): computed that way, in O(N) and without query / key
  projections (under that mask they would get no gradient).
  """
  num_heads: int
  self_only: bool = False
  zero_init_out: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """x: (B, N, D); mask: optional bool (B, N, N), True = may attend."""
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads="
                       f"{self.num_heads}")
    e = d // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, e), dtype=self.dtype,
                                         name=name)
    v = dense("value")(x)                                   # (B, N, H, E)
    if self.self_only:
      if mask is not None:
        raise ValueError("a self_only Attention takes no mask")
      out = v
    else:
      q = dense("query")(x) * jnp.asarray(e ** -0.5, self.dtype)
      k = dense("key")(x)
      logits = jnp.einsum("bqhe,bkhe->bhqk", q, k,
                          preferred_element_type=jnp.float32)  # (B,H,N,N)
      if mask is not None:
        logits = jnp.where(mask[:, None], logits, _NEG_INF)
      probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      out = jnp.einsum("bhqk,bkhe->bqhe", probs, v)         # (B, N, H, E)
    init = (nn.initializers.zeros if self.zero_init_out
            else nn.initializers.lecun_normal())
    return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=init, name="out")(out)


class Block(nn.Module):
  """Pre-LN Transformer encoder block: x + Attn(LN(x)), then x + MLP(LN(x)).

  (B, N, D) -> (B, N, D). `zero_init_out` zero-initialises both residual
  branches' output projections, so the block starts as the identity.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  self_only: bool = False
  zero_init_out: bool = False
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    d = x.shape[-1]
    y = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="ln_attn")(x)
    x = x + Attention(self.num_heads, self.self_only, self.zero_init_out,
                      self.dtype, name="attn")(y, mask)
    y = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="ln_mlp")(x)
    f = max(1, int(round(self.mlp_ratio * d)))
    y = nn.Dense(f, dtype=self.dtype, name="mlp_in")(y)      # (B, N, F)
    y = nn.gelu(y, approximate=True)
    init = (nn.initializers.zeros if self.zero_init_out
            else nn.initializers.lecun_normal())
    y = nn.Dense(d, dtype=self.dtype, kernel_init=init, name="mlp_out")(y)
    return x + y


class Scorer(nn.Module):
  """Per-token importance logits from the visual tokens alone.

  (B, N, Dv) -> float32 logits (B, N). `num_layers` pre-LN encoder blocks with
  global self-attention, a final LayerNorm and a bias-free linear head. No
  positional embedding: permuting the tokens permutes the logits. `width=None`
  keeps the input width Dv; another width adds a linear input projection.
  """
  num_layers: int = 2
  width: Optional[int] = None
  num_heads: int = 16
  mlp_ratio: float = 4.0
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.ndim != 3:
      raise ValueError(f"Scorer input must be (B, N, Dv), got {x.shape}")
    if self.num_layers < 0:
      raise ValueError(f"num_layers must be >= 0, got {self.num_layers}")
    x = x.astype(self.dtype)
    if self.width is not None and self.width != x.shape[-1]:
      x = nn.Dense(self.width, dtype=self.dtype, name="input_proj")(x)
    for i in range(self.num_layers):
      x = Block(self.num_heads, self.mlp_ratio, eps=self.eps, dtype=self.dtype,
                name=f"block_{i}")(x)
    x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="final_norm")(x)
    # No bias: top-K and soft top-K ignore a shift shared by all tokens, so a
    # bias would get exactly zero gradient.
    logits = nn.Dense(1, use_bias=False, dtype=self.dtype, name="head")(x)
    return logits[..., 0].astype(jnp.float32)


class Denoiser(nn.Module):
  """One Transformer block under the identity attention mask (train-only).

  (B, N, Dv) -> (B, N, Dv): output token i depends on input token i only, so
  content cannot leak from kept tokens into dropped ones. Both residual
  branches' output projections start at zero, so at initialisation the
  Denoiser is exactly the identity and training starts from "no change".
  """
  num_heads: int = 16
  mlp_ratio: float = 4.0
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.ndim != 3:
      raise ValueError(f"Denoiser input must be (B, N, Dv), got {x.shape}")
    return Block(self.num_heads, self.mlp_ratio, self_only=True,
                 zero_init_out=True, eps=self.eps, dtype=self.dtype,
                 name="block")(x)
