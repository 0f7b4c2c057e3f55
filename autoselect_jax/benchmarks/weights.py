"""Benchmark weights: fast hashed random values, or a checkpoint cut to depth."""

from __future__ import annotations

import math


def hash_params(abstract, dtype, seed: int):
  """Deterministic pseudo-random parameters of `abstract`'s shapes, on device.

  Timing does not depend on the values, and threefry draws only ~20 M
  numbers/s on a small CPU (40 s for the 0.8 B of a 2-layer PaliGemma-3B),
  so every leaf is an integer hash of its element index (one fused
  elementwise kernel, created in `dtype` under jit): uniform with std 0.02
  for weights, std 1 for the token embedding, zero biases, LayerNorm
  scales 1 and RMSNorm scales 0 (Gemma applies 1 + scale). Finite, no
  denormals, no exact zeros in the matrices.
  """
  import jax
  import jax.numpy as jnp
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)

  def leaf(i, path, a):
    names = [str(getattr(p, "key", p)) for p in path]
    if names[-1] == "bias":
      return jnp.zeros(a.shape, dtype)
    if names[-1] == "scale":
      return jnp.full(a.shape, 0.0 if names[0] == "llm" else 1.0, dtype)
    std = 1.0 if names[-1] == "input_embedding" else 0.02
    h = jax.lax.iota(jnp.uint32, math.prod(a.shape))
    h = h * jnp.uint32(0x9E3779B1) + jnp.uint32((seed * 7919 + i) % 2 ** 32)
    for shift, mul in ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None)):
      h = h ^ (h >> shift)
      if mul is not None:
        h = h * jnp.uint32(mul)
    u = (h >> 8).astype(jnp.float32) * 2.0 ** -24 - 0.5   # [-0.5, 0.5)
    return (u * (std * 12 ** 0.5)).astype(dtype).reshape(a.shape)

  make = lambda: jax.tree_util.tree_unflatten(
      treedef, [leaf(i, p, a) for i, (p, a) in enumerate(flat)])
  return jax.jit(make)()


def init_params(vlm, dtype, seed: int, how: str = "hash"):
  """Random VLM parameters created on the device in `dtype`, under jit.

  how="hash": `hash_params` (fast); "flax": the model's own initialisers,
  `vlm.init_params`, cast to `dtype` inside the same jit.
  """
  import jax
  if how == "hash":
    return hash_params(vlm.abstract_params(), dtype, seed)
  cast = lambda t: jax.tree_util.tree_map(lambda a: a.astype(dtype), t)
  return jax.jit(lambda r: cast(vlm.init_params(r)))(jax.random.key(seed))


def scorer_params(method, dtype, seed: int, how: str = "hash"):
  """Random `{"scorer": ...}` params of `method` (an `AutoSelect`) in `dtype`.

  how="hash": `hash_params` of the Scorer's shapes; "flax": the method's own
  initialisers (Scorer and Denoiser), cast to `dtype` under the same jit.
  """
  import jax
  if how == "hash":
    return {"scorer": hash_params(method.abstract_params()["scorer"], dtype,
                                  seed)}
  cast = lambda t: jax.tree_util.tree_map(lambda a: a.astype(dtype), t)
  return jax.jit(lambda r: cast(method.init(r)))(jax.random.key(seed))


def load_params(ckpt: str, config, full_config, dtype):
  """Checkpoint parameters in `dtype`, stacked layers cut to `config`'s depths."""
  import jax
  from autoselect_jax.checkpoints import store
  params = store.load_params(ckpt, full_config, dtype)
  cut = lambda t, n: jax.tree_util.tree_map(lambda a: a[:n], t)
  params = dict(params)
  params["llm"] = {**params["llm"], "layers": cut(params["llm"]["layers"],
                                                  config.llm.depth)}
  img = dict(params["img"])
  img["Transformer"] = {**img["Transformer"], "encoderblock": cut(
      img["Transformer"]["encoderblock"], config.vision.depth)}
  params["img"] = img
  return params
