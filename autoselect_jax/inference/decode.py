"""KV-cache prefill and decoding (greedy or sampled) over any `Sequence`.

The decoder is fed a `models.Sequence` ([K visual ; T text] with explicit
positions and masks, built by `vlm.sequence`), so the full model (K = N) and
a pruned one (K < N) share this code. Text is right-padded; generated tokens
are appended at shared cache slots L, L+1, ... (L = K + T) while each
example's positions continue from its own last real token, and the cache
mask hides the padding in between. The cache is per layer (`KVCache`): a
decode step writes one slot of each layer's keys and values.

Axes: B batch, K visual tokens, T text, L = K + T prefix length,
S = L + max_new_tokens cache slots, D width, V vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from autoselect_jax.models import VLM, Sequence


def prefill(vlm: VLM, params, seq: Sequence, cache_size: int):
  """Runs the sequence into a fresh cache of `cache_size` >= L slots.

  Returns (last real token's logits (B, V), KVCache, cache_mask (B, S) bool,
  last real token's position (B,)).
  """
  b, l = seq.input_mask.shape
  if cache_size < l:
    raise ValueError(f"cache_size={cache_size} is smaller than the sequence "
                     f"length {l}")
  hidden, kv = vlm.run_llm(params, seq.embeddings, seq.positions,
                           seq.attention_mask())
  cache = kv.pad_to(cache_size)
  cache_mask = jnp.pad(seq.input_mask, [(0, 0), (0, cache_size - l)])
  last = seq.last_real_row()                                    # (B,)
  h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
  logits = vlm.logits(params, h_last)[:, 0]
  last_pos = jnp.take_along_axis(seq.positions, last[:, None], 1)[:, 0]
  return logits, cache, cache_mask, last_pos


def extend(vlm: VLM, params, token, position, cache, cache_mask, index):
  """One decode step: token (B,), position (B,) written at slot `index`."""
  x = vlm.embed_text(params, token[:, None])
  cache_mask = jax.lax.dynamic_update_slice_in_dim(
      cache_mask, jnp.ones((token.shape[0], 1), bool), index, axis=1)
  hidden, cache = vlm.run_llm(params, x, position[:, None],
                              cache_mask[:, None, :], cache, index)
  return vlm.logits(params, hidden)[:, 0], cache, cache_mask


def sample_logits(logits, keys, temperature, top_p):
  """Next tokens (B,) from logits (B, V): greedy, or sampled with nucleus.

  temperature == 0 is argmax (lower id on ties). Otherwise each row samples
  from softmax(logits / temperature) restricted to its top-p nucleus: the
  fewest highest-probability tokens whose probabilities sum to >= top_p (at
  least one). keys: (B,) one PRNG key per example.
  """
  def greedy():
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sample():
    z = logits.astype(jnp.float32) / temperature               # (B, V)
    desc = jnp.sort(z, axis=-1)[:, ::-1]
    p = jax.nn.softmax(desc, axis=-1)
    keep = jnp.sum(jnp.cumsum(p, axis=-1) - p < top_p, axis=-1)  # >= 1
    cut = jnp.take_along_axis(desc, keep[:, None] - 1, axis=-1)  # (B, 1)
    z = jnp.where(z >= cut, z, -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys, z).astype(jnp.int32)

  return jax.lax.cond(temperature > 0, sample, greedy)


def _generate(vlm: VLM, params, prefilled, *, max_new_tokens: int, eos_id,
              pad_id, temperature, top_p, rng):
  """The decode loop from `prefill`'s output (see `decode`)."""
  logits, cache, cache_mask, pos = prefilled
  b = logits.shape[0]
  l = cache_mask.shape[1] - max_new_tokens   # Prefix length: the first slot.
  if l < 1:
    raise ValueError(f"the cache has {cache_mask.shape[1]} slots, not enough "
                     f"for a prefix and max_new_tokens={max_new_tokens}")
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
    t, logits, cache, cache_mask, pos, out, done = state
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
    token = sample_logits(logits, step_keys, temperature, top_p)
    token = jnp.where(done, pad_id, token)
    out = out.at[:, t].set(token)
    done = done | (token == eos_id)
    pos = pos + 1
    # The last token needs no forward pass: nothing reads its logits.
    logits, cache, cache_mask = jax.lax.cond(
        t + 1 < max_new_tokens,
        lambda: extend(vlm, params, token, pos, cache, cache_mask, l + t),
        lambda: (logits, cache, cache_mask))
    return t + 1, logits, cache, cache_mask, pos, out, done

  state = (jnp.int32(0), logits, cache, cache_mask, pos, out, done)
  return jax.lax.while_loop(cond, body, state)[5]


@functools.partial(jax.jit, static_argnames=("vlm", "max_new_tokens"))
def decode(vlm: VLM, params, seq: Sequence, *, max_new_tokens: int, eos_id,
           pad_id, temperature=0.0, top_p=1.0, rng=None):
  """Generated tokens (B, max_new_tokens) after a KV-cache prefill.

  The cache holds L + max_new_tokens slots (L = prefix length). Greedy at
  temperature 0 (the default), else sampled (see `sample_logits`); example b
  draws from fold_in(rng, b), so its tokens do not depend on the rest of the
  batch. After <eos> an example emits pad; the loop stops once every example
  has emitted <eos>. temperature and top_p are traced: changing them does not
  recompile.
  """
  l = seq.input_mask.shape[1]
  return _generate(vlm, params, prefill(vlm, params, seq, l + max_new_tokens),
                   max_new_tokens=max_new_tokens, eos_id=eos_id,
                   pad_id=pad_id, temperature=temperature, top_p=top_p,
                   rng=rng)


@functools.partial(jax.jit, static_argnames=("vlm", "max_new_tokens"))
def decode_prefilled(vlm: VLM, params, prefilled, *, max_new_tokens: int,
                     eos_id, pad_id, temperature=0.0, top_p=1.0, rng=None):
  """`decode` from an already prefilled cache: `prefill`'s output (logits,
  cache, cache_mask, last positions) over L + max_new_tokens slots, e.g. from
  `prune.prefill_images`. Same tokens as `decode` on the same sequence."""
  return _generate(vlm, params, prefilled, max_new_tokens=max_new_tokens,
                   eos_id=eos_id, pad_id=pad_id, temperature=temperature,
                   top_p=top_p, rng=rng)


def greedy_decode(vlm: VLM, params, seq: Sequence, *, max_new_tokens: int,
                  eos_id, pad_id):
  """Greedy tokens (B, max_new_tokens): `decode` at temperature 0."""
  return decode(vlm, params, seq, max_new_tokens=max_new_tokens,
                eos_id=eos_id, pad_id=pad_id)
