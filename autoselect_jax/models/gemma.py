"""Gemma (v1) decoder in Flax linen, with an explicit KV cache.

Parameter names follow big_vision / the Gemma library:

  llm/embedder/input_embedding             (V, D), tied with the output layer
  llm/layers/pre_attention_norm/scale      RMSNorm, applied as x * (1 + scale)
  llm/layers/attn/q_einsum/w               (H, D, E)     } when Hkv < H
  llm/layers/attn/kv_einsum/w              (2, Hkv, D, E)}
  llm/layers/attn/qkv_einsum/w             (3, H, D, E)    when Hkv == H
  llm/layers/attn/attn_vec_einsum/w        (H, E, D)
  llm/layers/pre_ffw_norm/scale
  llm/layers/mlp/gating_einsum             (2, D, F): [0] gate, [1] up (GeGLU)
  llm/layers/mlp/linear                    (F, D)
  llm/final_norm/scale
All `layers/*` arrays carry a leading L (depth) axis: the blocks run under nn.scan.
With `scan_layers=False` each layer is its own subtree `layers_{i}` instead.

Axes: B batch, T query positions, S key positions (cache slots), D width,
H query heads, G query heads per KV head, K KV heads, E head dim, F MLP, V vocab.

The decoder never sees token ids of images: callers hand it any sequence of
embeddings (B, T, D), explicit positions (B, T) and a boolean attention mask
(B, T, S). That is what lets a pruned set of visual tokens plug in unchanged.
With the per-layer layout a call may also run a slice of the blocks
(`layers`), skip the final norm and return one query row's attention
probabilities (`attention_of`): what pruning inside the decoder needs
(inference/fastv.py).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoselect_jax.models.config import GemmaConfig
from autoselect_jax.models.sequence import NEG_INF


class KVCache(NamedTuple):
  """Keys and values, one (B, S, K, E) array per layer (L of each).

  Kept per layer, as the Gemma library does, so a decode step writes one slot
  of each layer's arrays in place instead of re-stacking an (L, B, S, K, E)
  block every token.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]

  @property
  def size(self) -> int:
    """S, the number of slots."""
    return self.k[0].shape[1]

  @property
  def depth(self) -> int:
    return len(self.k)

  def pad_to(self, size: int) -> "KVCache":
    """The same keys and values in a cache of `size` >= S slots (zeros after)."""
    if size < self.size:
      raise ValueError(f"cannot pad a cache of {self.size} slots to {size}")
    pad = [(0, 0), (0, size - self.size), (0, 0), (0, 0)]
    return KVCache(tuple(jnp.pad(a, pad) for a in self.k),
                   tuple(jnp.pad(a, pad) for a in self.v))


class RMSNorm(nn.Module):
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def apply_rope(x, positions, base: float):
  """Rotary embedding, halves convention. x: (B, T, H, E), positions: (B, T)."""
  e = x.shape[-1]
  freq = base ** (-jnp.arange(0, e, 2, dtype=jnp.float32) / e)  # (E/2,)
  angle = positions.astype(jnp.float32)[..., None, None] * freq  # (B,T,1,E/2)
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Einsum(nn.Module):
  """A weight `w` of a fixed shape, applied with an einsum equation."""
  shape: tuple[int, ...]
  fan_in_axis: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, eqn: str, x):
    std = self.shape[self.fan_in_axis] ** -0.5
    w = self.param("w", nn.initializers.normal(stddev=std), self.shape)
    return jnp.einsum(eqn, x, w.astype(self.dtype))


class Attention(nn.Module):
  """Multi-head / multi-query / grouped-query attention with RoPE."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_base: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, mask, k_cache=None, v_cache=None,
               cache_index=None, query_index=None):
    """x (B,T,D), positions (B,T), mask (B,T,S) -> y (B,T,D), (k, v).

    Without a cache S = T and the returned k, v (B,T,K,E) are this call's keys
    and values. With a cache (B,S,K,E) they are written at `cache_index` and the
    whole updated cache is returned. With `query_index` (B,) int a third
    output is the attention probabilities of that query row, (B,H,S) float32.
    """
    d = x.shape[-1]
    h, kh, e = self.num_heads, self.num_kv_heads, self.head_dim
    if h == kh:
      q, k, v = Einsum((3, h, d, e), 2, self.dtype, name="qkv_einsum")(
          "btd,chde->cbthe", x)
    else:
      q = Einsum((h, d, e), 1, self.dtype, name="q_einsum")("btd,hde->bthe", x)
      k, v = Einsum((2, kh, d, e), 2, self.dtype, name="kv_einsum")(
          "btd,ckde->cbtke", x)
    q = apply_rope(q, positions, self.rope_base) * jnp.asarray(
        e ** -0.5, self.dtype)
    k = apply_rope(k, positions, self.rope_base)
    if k_cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype),
                                              cache_index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype),
                                              cache_index, axis=1)
    b, t = q.shape[:2]
    q = q.reshape(b, t, kh, h // kh, e)  # (B,T,K,G,E)
    logits = jnp.einsum("btkge,bske->bkgts", q, k.astype(self.dtype),
                        preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None], logits, NEG_INF)
    probs32 = jax.nn.softmax(logits, axis=-1)
    probs = probs32.astype(self.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v.astype(self.dtype))
    out = out.reshape(b, t, h, e)
    y = Einsum((h, e, d), 1, self.dtype, name="attn_vec_einsum")(
        "bthe,hed->btd", out)
    if query_index is None:
      return y, (k, v)
    row = jnp.take_along_axis(
        probs32, query_index.astype(jnp.int32)[:, None, None, None, None],
        axis=3)[:, :, :, 0]                                      # (B,K,G,S)
    return y, (k, v), row.reshape(b, h, -1)  # Head h = k * G + g, as q's.


class FeedForward(nn.Module):
  """GeGLU MLP: gelu_tanh(x W_gate) * (x W_up) W_down."""
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    normal = nn.initializers.normal
    gating = self.param("gating_einsum", normal(d ** -0.5), (2, d, self.mlp_dim))
    linear = self.param("linear", normal(self.mlp_dim ** -0.5),
                        (self.mlp_dim, d))
    # One product batched over c, x broadcast: the (2, D, F) weight is read
    # in place. "btd,cdf->cbtf" made XLA transpose the whole weight on every
    # call (270 MB per Gemma-2B layer in float32), and gating[0] / gating[1]
    # slices were copied.
    xc = jnp.broadcast_to(x, (2,) + x.shape)
    gate, up = jnp.einsum("cbtd,cdf->cbtf", xc, gating.astype(self.dtype))
    return jnp.einsum("btf,fd->btd", nn.gelu(gate, approximate=True) * up,
                      linear.astype(self.dtype))


class Block(nn.Module):
  """Pre-norm decoder block, scan-compatible: (x, ...) -> (x, (k, v))."""
  config: GemmaConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, mask, cache_index, kv, query_index=None):
    """With `query_index` (B,) (per-layer use only, not under the scan) a third
    output is that query row's attention probabilities (B, H, S)."""
    c = self.config
    k_cache, v_cache = kv if kv is not None else (None, None)
    y = RMSNorm(c.rms_norm_eps, name="pre_attention_norm")(x)
    y, new_kv, *row = Attention(
        c.num_heads, c.num_kv_heads, c.head_dim, c.rope_base, self.dtype,
        name="attn")(y, positions, mask, k_cache, v_cache, cache_index,
                     query_index)
    x = x + y
    y = RMSNorm(c.rms_norm_eps, name="pre_ffw_norm")(x)
    x = x + FeedForward(c.mlp_dim, self.dtype, name="mlp")(y)
    return (x, new_kv, *row)


class Embedder(nn.Module):
  vocab_size: int
  width: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.input_embedding = self.param(
        "input_embedding", nn.initializers.normal(stddev=1.0),
        (self.vocab_size, self.width))

  def encode(self, tokens):
    """(B, T) int -> (B, T, D), scaled by sqrt(D) as Gemma does."""
    x = jnp.take(self.input_embedding.astype(self.dtype), tokens, axis=0)
    return x * jnp.asarray(self.width ** 0.5, self.dtype)

  def decode(self, x):
    """(B, T, D) -> float32 logits (B, T, V) through the tied embedding."""
    return jnp.einsum("btd,vd->btv", x, self.input_embedding.astype(self.dtype),
                      preferred_element_type=jnp.float32)


class Gemma(nn.Module):
  """The decoder: `embed`, `__call__` (blocks + final norm) and `logits`."""
  config: GemmaConfig
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  unroll: int = 1  # Scan unroll; small models run faster unrolled on CPU.
  # False: one submodule per layer (`layers_0`, ...; see `unstack_layers`).
  # Inside a scan XLA copies each layer's weights out of the stacked arrays
  # on every call; per-layer arrays are read in place (inference).
  scan_layers: bool = True

  def setup(self):
    c = self.config
    self.embedder = Embedder(c.vocab_size, c.width, self.dtype)
    block = nn.remat(Block) if self.remat else Block
    if self.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
          length=c.depth, unroll=self.unroll)(c, self.dtype)
    else:
      self.blocks = [block(c, self.dtype, name=f"layers_{i}")
                     for i in range(c.depth)]
    self.final_norm = RMSNorm(c.rms_norm_eps)

  def embed(self, tokens):
    return self.embedder.encode(tokens)

  def __call__(self, x, positions, mask, cache: KVCache | None = None,
               cache_index=None, *, layers: tuple[int, int] | None = None,
               final_norm: bool = True, attention_of=None):
    """Runs the blocks on embeddings.

    Args:
      x: (B, T, D) input embeddings (text already scaled by sqrt(D)), or the
        hidden states entering block `layers[0]`.
      positions: (B, T) int RoPE positions.
      mask: (B, T, S) bool, True where query t may attend to key s. S = T
        without a cache, S = cache size with one.
      cache: optional KVCache, one (B, S, K, E) array per block run (all L, or
        stop - start with `layers`); this call's keys and values are written
        at slots [cache_index, cache_index + T).
      cache_index: int scalar, required with `cache`.
      layers: optional (start, stop): run blocks [start, stop) only, so one
        forward pass can be split into consecutive calls, each with its own
        cache, mask and rows. Needs scan_layers=False unless it is (0, L).
      final_norm: apply the final RMSNorm (False: the raw residual stream,
        e.g. to feed a later call's `layers`).
      attention_of: optional (layer, query_index): also return block
        `layer`'s (absolute index, within `layers`) attention probabilities
        of query row query_index (B,) int. Needs scan_layers=False.

    Returns:
      (hidden (B, T, D), KVCache): the updated cache, or without an input
      cache this call's own keys and values (B, T, K, E), one per block run.
      With `attention_of` a third output: probabilities (B, H, S) float32.
    """
    b, t, _ = x.shape
    c = self.config
    start, stop = self._check_layers(layers)
    if positions.shape != (b, t):
      raise ValueError(f"positions must be {(b, t)}, got {positions.shape}")
    s = t if cache is None else cache.size
    if mask.shape != (b, t, s):
      raise ValueError(f"mask must be {(b, t, s)}, got {mask.shape}")
    if cache is not None:
      if cache_index is None:
        raise ValueError("cache_index is required with a cache")
      if cache.depth != stop - start:
        raise ValueError(f"the cache has {cache.depth} layers, the blocks "
                         f"run {stop - start} (layers [{start}, {stop}))")
    row_layer, query_index = self._check_attention_of(attention_of, start,
                                                      stop, b)
    index = 0 if cache_index is None else cache_index
    x = x.astype(self.dtype)
    row = None
    if self.scan_layers:  # The scan carries one stacked array per k and v
      # (re-stacked per call: decoding runs on per-layer weights instead,
      # scan_layers=False, where each layer's cache is written in place).
      kv = None if cache is None else (jnp.stack(cache.k), jnp.stack(cache.v))
      x, (k, v) = self.layers(x, positions, mask, index, kv)
      new = KVCache(tuple(k), tuple(v))
    else:
      ks, vs = [], []
      for i in range(start, stop):
        j = i - start
        kv = None if cache is None else (cache.k[j], cache.v[j])
        if i == row_layer:
          x, (k, v), row = self.blocks[i](x, positions, mask, index, kv,
                                          query_index)
        else:
          x, (k, v) = self.blocks[i](x, positions, mask, index, kv)
        ks.append(k)
        vs.append(v)
      new = KVCache(tuple(ks), tuple(vs))
    if final_norm:
      x = self.final_norm(x)
    return (x, new) if attention_of is None else (x, new, row)

  def _check_layers(self, layers) -> tuple[int, int]:
    """`layers` -> (start, stop), checked against the depth and layout."""
    depth = self.config.depth
    if layers is None:
      return 0, depth
    if (not isinstance(layers, (tuple, list)) or len(layers) != 2
        or not all(isinstance(i, int) and not isinstance(i, bool)
                   for i in layers)):
      raise ValueError(f"layers must be a (start, stop) pair of ints, got "
                       f"{layers!r}")
    start, stop = layers
    if not 0 <= start < stop <= depth:
      raise ValueError(f"layers=({start}, {stop}) must satisfy 0 <= start < "
                       f"stop <= {depth} (the depth)")
    if self.scan_layers and (start, stop) != (0, depth):
      raise ValueError(f"layers=({start}, {stop}) runs a slice of the blocks, "
                       "which needs the per-layer layout (scan_layers=False, "
                       "params through unstack_layers)")
    return start, stop

  def _check_attention_of(self, attention_of, start, stop, batch):
    """`attention_of` -> (layer or None, query_index (B,) or None)."""
    if attention_of is None:
      return None, None
    if self.scan_layers:
      raise ValueError("attention_of needs the per-layer layout "
                       "(scan_layers=False, params through unstack_layers)")
    if not isinstance(attention_of, (tuple, list)) or len(attention_of) != 2:
      raise ValueError("attention_of must be a (layer, query_index) pair, "
                       f"got {type(attention_of).__name__}")
    layer, query_index = attention_of
    if not isinstance(layer, int) or not start <= layer < stop:
      raise ValueError(f"attention_of layer must be an int in [{start}, "
                       f"{stop}) (the blocks run), got {layer!r}")
    if jnp.shape(query_index) != (batch,):
      raise ValueError(f"attention_of query_index must be (B,) = "
                       f"{(batch,)}, got shape {jnp.shape(query_index)}")
    return layer, jnp.asarray(query_index)

  def logits(self, hidden):
    return self.embedder.decode(hidden)
