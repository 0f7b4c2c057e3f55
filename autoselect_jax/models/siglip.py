"""SigLIP vision encoder (no pooling head) and PaliGemma's linear projector.

Parameter names follow big_vision's ViT, so a big_vision checkpoint maps onto
this tree one to one:

  img/embedding/{kernel,bias}            patch embedding, kernel (P, P, 3, Dv)
  img/pos_embedding                      (1, N, Dv), learned
  img/Transformer/encoderblock/...       Dv blocks stacked on a leading L axis
  img/Transformer/encoder_norm           final LayerNorm
  img/head/{kernel,bias}                 the projector Dv -> D (PaliGemma)

Axes: B batch, N visual tokens, Dv (D) vision width, H heads, E head dim,
F MLP.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from autoselect_jax.models.attention import LastAttention, SelfAttention
from autoselect_jax.models.config import SiglipConfig


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # (B, N, Dv) -> (B, N, Dv)
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x)
    x = nn.gelu(x, approximate=True)
    return nn.Dense(d, dtype=self.dtype, name="Dense_1")(x)


class Encoder1DBlock(nn.Module):
  """Pre-LN Transformer encoder block; scan-compatible (carry, None).

  With `return_attention` the carry is `(x, LastAttention)`: the block
  replaces the incoming statistics with its own, so after a scan the carry
  holds the last block's.
  """
  num_heads: int
  mlp_dim: int
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  return_attention: bool = False

  @nn.compact
  def __call__(self, carry, mask=None):
    x = carry[0] if self.return_attention else carry
    y = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="LayerNorm_0")(x)
    y = SelfAttention(self.num_heads, self.dtype,
                      name="MultiHeadDotProductAttention_0")(
                          y, mask, return_attention=self.return_attention)
    if self.return_attention:
      y, stats = y
      stats = stats._replace(keys=stats.keys.astype(x.dtype))
    x = x + y
    y = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="LayerNorm_1")(x)
    y = MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")(y)
    x = x + y
    return ((x, stats) if self.return_attention else x), None


def _no_attention(x):
  """Placeholder statistics for the carry; every block replaces them."""
  b, n, d = x.shape
  return LastAttention(jnp.zeros((b, n), jnp.float32),
                       jnp.zeros((b, n, d), x.dtype))


class Encoder(nn.Module):
  """`depth` blocks under nn.scan (params stacked on axis 0), then a LayerNorm.

  `last_attention=True` returns `(x, LastAttention)` of the last block; the
  parameters and the output are the same.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  unroll: int = 1  # Scan unroll; small models run faster unrolled on CPU.
  scan_layers: bool = True  # False: `encoderblock_0`, ... (see gemma.Gemma).

  @nn.compact
  def __call__(self, x, mask=None, last_attention: bool = False):
    block = nn.remat(Encoder1DBlock) if self.remat else Encoder1DBlock
    args = (self.num_heads, self.mlp_dim, self.eps, self.dtype)
    if not self.scan_layers:
      for i in range(self.depth):
        last = last_attention and i == self.depth - 1
        x, _ = block(*args, return_attention=last, name=f"encoderblock_{i}")(
            (x, _no_attention(x)) if last else x, mask)
    else:
      stack = nn.scan(block, variable_axes={"params": 0},
                      split_rngs={"params": True}, in_axes=nn.broadcast,
                      length=self.depth, unroll=self.unroll)
      x, _ = stack(*args, return_attention=last_attention, name="encoderblock")(
          (x, _no_attention(x)) if last_attention else x, mask)
    x, stats = x if last_attention else (x, None)
    x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="encoder_norm")(x)
    return (x, stats) if last_attention else x


class PatchEmbed(nn.Module):
  """Non-overlapping P x P patches -> Dv: a stride-P convolution written as
  one matmul over flattened patches (same `kernel` (P, P, 3, Dv) and `bias`
  as nn.Conv; much faster than a convolution on CPU, same on accelerators)."""
  width: int
  patch_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):  # (B, H, W, 3) -> (B, N, Dv), row-major patches.
    p = self.patch_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(
        in_axis=(0, 1, 2), out_axis=3), (p, p, 3, self.width))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.width,))
    b, h, w, c = images.shape
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c)
    y = jnp.einsum("bnk,kd->bnd", x, kernel.reshape(p * p * c, self.width)
                   .astype(self.dtype))
    return y + bias.astype(self.dtype)


class SiglipVision(nn.Module):
  """Images (B, H, W, 3) in [-1, 1] -> tokens (B, N, Dv); `project` -> (B, N, D)."""
  config: SiglipConfig
  out_dim: int  # LLM width, for the projector `head`.
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  unroll: int = 1
  scan_layers: bool = True

  def setup(self):
    c = self.config
    self.embedding = PatchEmbed(c.width, c.patch_size, self.dtype)
    self.pos_embedding = self.param(
        "pos_embedding", nn.initializers.normal(stddev=c.width ** -0.5),
        (1, c.num_tokens, c.width))
    self.Transformer = Encoder(c.depth, c.num_heads, c.mlp_dim,
                               c.layer_norm_eps, self.dtype, self.remat,
                               self.unroll, self.scan_layers)
    self.head = nn.Dense(self.out_dim, dtype=self.dtype)

  def __call__(self, images, last_attention: bool = False):
    """(B, H, W, 3) -> (B, N, Dv): the encoder output after its final LayerNorm.

    With `last_attention=True`: `(features, LastAttention)`, the attention
    statistics of the last encoder block (received (B, N), keys (B, N, Dv)),
    for the attention-based baselines. The features are the same.
    """
    c = self.config
    if images.ndim != 4 or images.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f"images must have shape (B, {c.image_size}, "
                       f"{c.image_size}, 3), got {images.shape}")
    x = self.embedding(images.astype(self.dtype))  # (B, N, Dv)
    x = x + self.pos_embedding.astype(self.dtype)
    return self.Transformer(x, last_attention=last_attention)

  def project(self, x):
    """(B, N, Dv) -> (B, N, D): PaliGemma's linear projector."""
    return self.head(x)
