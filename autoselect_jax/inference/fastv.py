"""FastV: visual tokens pruned inside the decoder, by the decoder's attention.

The baseline of Chen et al. (ECCV 2024), "An Image is Worth 1/2 Tokens After
Layer 2". The full sequence [N visual ; T text] runs through decoder layers
[0, r). Block r-1's attention probabilities of the last prompt token (each
example's last real row), averaged over heads, score the N visual tokens;
the K highest are kept (ascending order, lower index first on ties) and
layers [r, L) run on the K kept visual rows plus all T text rows. Kept rows
keep their original positions and the prefix-LM mask among them, so layers
>= r compute exactly what the full model computes with the pruned columns
hidden (tests/test_fastv.py checks that). As in the authors' reference, the
selection happens once, at prefill; decode steps do not prune again.

Requirements: 1 <= r < L (r = 0 has no earlier layer's attention to rank by;
r = L would prune nothing any layer reads, the full model under another
name), 1 <= K <= N, the per-layer parameter layout (`VLM(...,
scan_layers=False)`, params through `unstack_layers`), and every example's
last real row a text row (at least one real text token, e.g. <bos>).

The KV cache is two groups, each a plain `KVCache` with its own mask:

  full    layers [0, r),  S slots: rows 0..L-1 = N + T, then generated tokens
  pruned  layers [r, L),  S - (N - K) slots: K + T rows, then generated tokens

(S = cache_size.) Both have the same number of free slots after the prompt,
so decode step t writes slot L + t of the full group and L - (N - K) + t of
the pruned one: one decoder call per group (`Gemma.__call__`'s `layers`),
the first without the final norm. The pruned group is the memory FastV saves.

Axes: B batch, N visual tokens, K kept, T text, L = N + T rows, S cache
slots, H heads, D width, V vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from autoselect_jax.inference.decode import sample_logits
from autoselect_jax.method.selection import select_topk
from autoselect_jax.models import VLM, Sequence

__all__ = ["fastv_scores", "fastv_prefill", "fastv_extend", "fastv_decode"]


def _depth(vlm: VLM) -> int:
  """L, the number of decoder blocks."""
  return vlm.config.llm.depth


def _check(vlm: VLM, seq: Sequence, k, layer) -> tuple[int, int]:
  """-> (N, L) after checking k, layer and the layout."""
  n, depth = seq.text_start, _depth(vlm)
  if vlm.scan_layers:
    raise ValueError("FastV runs the decoder in two slices, which needs the "
                     "per-layer layout: VLM(..., scan_layers=False) with "
                     "params through unstack_layers")
  if not isinstance(layer, int) or isinstance(layer, bool) or not (
      1 <= layer < depth):
    raise ValueError(f"layer must be an int in [1, {depth}) (the decoder has "
                     f"{depth} layers), got {layer!r}")
  if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
    raise ValueError(f"k must be an int in [1, {n}] (the visual tokens), got "
                     f"{k!r}")
  if seq.length <= n:
    raise ValueError(f"the sequence has no text rows ({seq.length} rows, "
                     f"{n} visual)")
  return n, depth


def fastv_scores(probs, n: int):
  """Attention probabilities (B, H, S) of one query row -> (B, N) scores:
  the mean over heads, on the first N (visual) key columns."""
  return jnp.mean(probs[:, :, :n], axis=1)


def fastv_prefill(vlm: VLM, params, seq: Sequence, *, k: int, layer: int = 2,
                  cache_size: int):
  """Prefill with FastV pruning at decoder layer `layer` (r).

  Args:
    seq: the full model's Sequence: N = seq.text_start visual rows, then T
      text rows, right-padded.
    k: visual tokens kept for layers >= r, static.
    layer: r, static, 1 <= r < L.
    cache_size: S >= N + T, the full group's slots (as `decode.prefill`).

  Returns:
    (logits (B, V) of the last real row, caches (full KVCache of r layers and
    S slots, pruned KVCache of L - r layers and S - (N - K) slots), masks
    ((B, S), (B, S - (N - K)) bool: the real slots of each group), last real
    position (B,) int32, kept (B, K) int32 ascending visual indices).
  """
  n, depth = _check(vlm, seq, k, layer)
  b, l = seq.input_mask.shape
  if cache_size < l:
    raise ValueError(f"cache_size={cache_size} is smaller than the sequence "
                     f"length {l}")
  last = seq.last_real_row()                                    # (B,)
  h, kv_full, probs = vlm.run_llm(
      params, seq.embeddings, seq.positions, seq.attention_mask(),
      layers=(0, layer), final_norm=False, attention_of=(layer - 1, last))
  kept = select_topk(fastv_scores(probs, n), k)                 # (B, K)
  rows = jnp.concatenate(
      [kept, jnp.broadcast_to(jnp.arange(n, l, dtype=jnp.int32),
                              (b, l - n))], 1)                  # (B, K + T)
  take = lambda a: jnp.take_along_axis(a, rows, axis=1)
  pruned = Sequence(
      embeddings=jnp.take_along_axis(h, rows[..., None], axis=1),
      positions=take(seq.positions), input_mask=take(seq.input_mask),
      mask_ar=take(seq.mask_ar), text_start=k)
  hidden, kv_pruned = vlm.run_llm(params, pruned.embeddings, pruned.positions,
                                  pruned.attention_mask(),
                                  layers=(layer, depth))
  drop = n - k
  caches = (kv_full.pad_to(cache_size), kv_pruned.pad_to(cache_size - drop))
  masks = (jnp.pad(seq.input_mask, [(0, 0), (0, cache_size - l)]),
           jnp.pad(pruned.input_mask, [(0, 0), (0, cache_size - l)]))
  h_last = jnp.take_along_axis(hidden, (last - drop)[:, None, None], axis=1)
  logits = vlm.logits(params, h_last)[:, 0]
  last_pos = jnp.take_along_axis(seq.positions, last[:, None], 1)[:, 0]
  return logits, caches, masks, last_pos, kept


def fastv_extend(vlm: VLM, params, token, position, caches, masks, index, *,
                 layer: int = 2):
  """One decode step: token (B,) at position (B,) -> (logits (B, V), caches,
  masks). `index` is the full group's slot; the pruned group writes
  index - (N - K), the difference of the two groups' sizes."""
  depth = _depth(vlm)
  full, pruned = caches
  full_mask, pruned_mask = masks
  drop = full.size - pruned.size
  ones = jnp.ones((token.shape[0], 1), bool)
  full_mask = jax.lax.dynamic_update_slice_in_dim(full_mask, ones, index, 1)
  pruned_mask = jax.lax.dynamic_update_slice_in_dim(pruned_mask, ones,
                                                    index - drop, 1)
  x = vlm.embed_text(params, token[:, None])
  h, full = vlm.run_llm(params, x, position[:, None], full_mask[:, None],
                        full, index, layers=(0, layer), final_norm=False)
  hidden, pruned = vlm.run_llm(params, h, position[:, None],
                               pruned_mask[:, None], pruned, index - drop,
                               layers=(layer, depth))
  return (vlm.logits(params, hidden)[:, 0], (full, pruned),
          (full_mask, pruned_mask))


@functools.partial(jax.jit,
                   static_argnames=("vlm", "k", "layer", "max_new_tokens"))
def fastv_decode(vlm: VLM, params, seq: Sequence, *, k: int, layer: int = 2,
                 max_new_tokens: int, eos_id, pad_id, temperature=0.0,
                 top_p=1.0, rng=None):
  """Generated tokens (B, max_new_tokens) and kept (B, K) after a FastV
  prefill; the stopping and sampling semantics of `decode.decode` (greedy at
  temperature 0, example b samples from fold_in(rng, b), pad after <eos>,
  stop once every example has emitted <eos>)."""
  b, l = seq.input_mask.shape
  logits, caches, masks, pos, kept = fastv_prefill(
      vlm, params, seq, k=k, layer=layer, cache_size=l + max_new_tokens)
  if rng is None:
    rng = jax.random.key(0)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(b))
  temperature = jnp.asarray(temperature, jnp.float32)
  top_p = jnp.asarray(top_p, jnp.float32)
  out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
  done = jnp.zeros((b,), bool)

  def cond(state):
    t, _, _, _, _, _, done = state
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(state):
    t, logits, caches, masks, pos, out, done = state
    step_keys = jax.vmap(lambda key: jax.random.fold_in(key, t))(keys)
    token = sample_logits(logits, step_keys, temperature, top_p)
    token = jnp.where(done, pad_id, token)
    out = out.at[:, t].set(token)
    done = done | (token == eos_id)
    pos = pos + 1
    logits, caches, masks = jax.lax.cond(
        t + 1 < max_new_tokens,
        lambda: fastv_extend(vlm, params, token, pos, caches, masks, l + t,
                             layer=layer),
        lambda: (logits, caches, masks))
    return t + 1, logits, caches, masks, pos, out, done

  state = (jnp.int32(0), logits, caches, masks, pos, out, done)
  return jax.lax.while_loop(cond, body, state)[5], kept
