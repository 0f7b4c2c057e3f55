"""The trainable AutoSelect modules: `Scorer` and `Denoiser` (Flax linen).

Both act on the vision encoder's output tokens (B, N, Dv) and carry no
positional embedding: the Scorer is equivariant to permutations of the tokens,
the Denoiser (the paper's "diagonal" attention) transforms every token on its
own; its "global" ablation lets every token attend to all of them.

Axes: B batch, N visual tokens, D width, H heads, E head dim, F MLP width.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from autoselect_jax.models.attention import SelfAttention

__all__ = ["Block", "Scorer", "Denoiser", "DENOISER_ATTENTIONS"]

DENOISER_ATTENTIONS = ("diagonal", "global")


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
    x = x + SelfAttention(self.num_heads, self.dtype, self.self_only,
                          self.zero_init_out, name="attn")(y, mask)
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
  """One Transformer block over the noised tokens (train-only).

  (B, N, Dv) -> (B, N, Dv). With `attention="diagonal"` (the paper) the
  block runs under the identity attention mask: output token i depends on
  input token i only, so content cannot leak from kept tokens into dropped
  ones. `attention="global"` is the paper's ablation: ordinary self-attention
  over all N tokens (the same block, plus query / key projections). Either
  way both residual branches' output projections start at zero, so at
  initialisation the Denoiser is exactly the identity and training starts
  from "no change".
  """
  num_heads: int = 16
  mlp_ratio: float = 4.0
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  attention: str = "diagonal"

  @nn.compact
  def __call__(self, x):
    if x.ndim != 3:
      raise ValueError(f"Denoiser input must be (B, N, Dv), got {x.shape}")
    if self.attention not in DENOISER_ATTENTIONS:
      raise ValueError(f"Denoiser attention must be one of "
                       f"{DENOISER_ATTENTIONS}, got {self.attention!r}")
    return Block(self.num_heads, self.mlp_ratio,
                 self_only=self.attention == "diagonal", zero_init_out=True,
                 eps=self.eps, dtype=self.dtype, name="block")(x)
