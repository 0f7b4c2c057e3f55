"""The plain-JAX reference decoder the benchmark compares the project with.

A hand-written jnp Gemma prefill (no Flax, no scan: a Python loop over the
layers) on per-layer 2-D weights in (in, out) layout, prepared once outside
the timed call.
"""

from __future__ import annotations


def reference_weights(params, c):
  """Per-layer 2-D matrices of the project's Gemma tree, (in, out) layout."""
  import jax
  d, h, kh, e = c.width, c.num_heads, c.num_kv_heads, c.head_dim

  @jax.jit
  def split(lay):
    attn = lay["attn"]
    if "qkv_einsum" in attn:
      w = attn["qkv_einsum"]["w"]                          # (L, 3, H, D, E)
      wq, wk, wv = w[:, 0], w[:, 1], w[:, 2]
    else:
      wq = attn["q_einsum"]["w"]                           # (L, H, D, E)
      wk, wv = attn["kv_einsum"]["w"][:, 0], attn["kv_einsum"]["w"][:, 1]
    mat = lambda w, i, heads: w[i].transpose(1, 0, 2).reshape(d, heads * e)
    gating, lin = lay["mlp"]["gating_einsum"], lay["mlp"]["linear"]
    return [dict(norm1=lay["pre_attention_norm"]["scale"][i],
                 wq=mat(wq, i, h), wk=mat(wk, i, kh), wv=mat(wv, i, kh),
                 wo=attn["attn_vec_einsum"]["w"][i].reshape(h * e, d),
                 norm2=lay["pre_ffw_norm"]["scale"][i],
                 wg=gating[i, 0], wu=gating[i, 1], wd=lin[i])
            for i in range(c.depth)]

  llm = params["llm"]
  return {"layers": split(llm["layers"]),
          "final_norm": llm["final_norm"]["scale"],
          "embedding": llm["embedder"]["input_embedding"]}


def _rms(x, scale, eps):
  import jax
  import jax.numpy as jnp
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)
  return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def _rope(x, sin, cos):
  """x (B, T, ..., E); sin, cos (B, T, E/2) float32; halves convention."""
  import jax.numpy as jnp
  shape = sin.shape[:2] + (1,) * (x.ndim - 3) + sin.shape[2:]
  sin, cos = sin.reshape(shape), cos.reshape(shape)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin],
                         -1).astype(x.dtype)


def reference_prefill(w, x, positions, input_mask, mask_ar, *, c, dtype):
  """Plain-jnp Gemma prefill: (last-token logits (B, V), [(k, v)] per layer).

  x (B, L, D) embeddings, positions (B, L), input_mask (B, L) bool, mask_ar
  (B, L) int: the same dense prefix-LM mask as `make_attention_mask`.
  k, v: (B, L, Hkv, E).
  """
  import jax
  import jax.numpy as jnp
  b, t, d = x.shape
  h, kh, e = c.num_heads, c.num_kv_heads, c.head_dim
  blocks = jnp.cumsum(mask_ar, axis=1)
  mask = (blocks[:, None, :] <= blocks[:, :, None]) & input_mask[:, None, :]
  freq = c.rope_base ** (-jnp.arange(0, e, 2, dtype=jnp.float32) / e)
  angle = positions.astype(jnp.float32)[..., None] * freq       # (B, L, E/2)
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x = x.astype(dtype)
  kv = []
  for lw in w["layers"]:
    y = _rms(x, lw["norm1"], c.rms_norm_eps)
    q = (y @ lw["wq"]).reshape(b, t, kh, h // kh, e)
    k = _rope((y @ lw["wk"]).reshape(b, t, kh, e), sin, cos)
    v = (y @ lw["wv"]).reshape(b, t, kh, e)
    q = _rope(q, sin, cos) * jnp.asarray(e ** -0.5, dtype)
    s = jnp.einsum("btkge,bske->bkgts", q, k,
                   preferred_element_type=jnp.float32)
    s = jnp.where(mask[:, None, None], s, -2.0 ** 100)
    p = jax.nn.softmax(s, axis=-1).astype(dtype)
    o = jnp.einsum("bkgts,bske->btkge", p, v).reshape(b, t, h * e)
    x = x + o @ lw["wo"]
    y = _rms(x, lw["norm2"], c.rms_norm_eps)
    x = x + (jax.nn.gelu(y @ lw["wg"], approximate=True)
             * (y @ lw["wu"])) @ lw["wd"]
    kv.append((k, v))
  hidden = _rms(x, w["final_norm"], c.rms_norm_eps)
  last = t - 1 - jnp.argmax(input_mask[:, ::-1], axis=1)          # (B,)
  h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  logits = jnp.einsum("bd,vd->bv", h_last, w["embedding"].astype(dtype),
                      preferred_element_type=jnp.float32)
  return logits, kv


def reference_fn(c, dtype):
  """`reference_prefill` for LLM config `c`, jitted: fn(w, x, positions,
  input_mask, mask_ar)."""
  import functools
  import jax
  return jax.jit(functools.partial(reference_prefill, c=c, dtype=dtype))


def warm_up_reference(fn, w, full_prefix, pruned_prefix, project_logits):
  """Compiles and runs the reference on the full and the pruned prefix.

  Returns ({pruned: (x, positions, input_mask, mask_ar)}, the max |diff| of
  its full-prefix logits from the project's `project_logits` (B, V),
  relative to the largest |project logit|): same weights, same inputs.
  """
  import numpy as np
  from autoselect_jax.benchmarks.timing import timed
  inputs = {}
  for pruned, p in ((False, full_prefix), (True, pruned_prefix)):
    inputs[pruned] = (p.embeddings, p.positions, p.input_mask, p.mask_ar)
    out = timed(fn, w, *inputs[pruned])[1]
    if not pruned:
      proj = np.asarray(project_logits, np.float32)
      err = float(np.max(np.abs(np.asarray(out[0], np.float32) - proj))
                  / max(float(np.max(np.abs(proj))), 1e-30))
  return inputs, err


def timed_calls(fn, w, inputs) -> list:
  """(key, fn, args) of one round: keys ("ref", False) then ("ref", True)."""
  return [(("ref", pruned), fn, (w, *inputs[pruned]))
          for pruned in (False, True)]


def reference_entry(batch: int, n: int, t: int, k: int, times, err: float,
                    project_speedup: float) -> dict:
  """The JSON's `reference` entry of one batch: medians of `times`
  ("ref", pruned) in ms, the reference's full / pruned speedup, the
  project's prefill speedup at the same K over it (`vs_reference`), and
  each project prefill's time over the reference's (`*_time_vs_reference`,
  from the ("prefill", k, pruned) times)."""
  import statistics
  full = statistics.median(times[("ref", False)]) * 1e3
  pruned = statistics.median(times[("ref", True)]) * 1e3
  entry = {"batch": batch, "k": k, "full_length": n + t,
           "pruned_length": k + t, "full_ms": full, "pruned_ms": pruned,
           "speedup": full / pruned, "logits_rel_err_vs_project": err}
  entry["vs_reference"] = project_speedup / entry["speedup"]
  project = lambda key: statistics.median(times[key]) * 1e3
  entry["full_time_vs_reference"] = project(("prefill", n, False)) / full
  entry["pruned_time_vs_reference"] = project(("prefill", k, True)) / pruned
  return entry
