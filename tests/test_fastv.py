"""FastV (`inference.fastv`): pruning inside the decoder, checked against the
full model (K = N), against a brute-force full model whose layers >= r cannot
see the pruned visual tokens (K < N), and its selection against the last
prompt token's attention recomputed by hand from block r-1's weights. Also
the decoder options it rests on (`Gemma.__call__`'s layers / final_norm /
attention_of) against the plain forward."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax.inference import decode, fastv
from autoselect_jax.models import (VLM, get_variant, grid_index,
                                   make_attention_mask)

# Prompts of 4 and 6 tokens (<bos> ... "\n"), right-padded to T = 7, all in
# the bidirectional prefix, as a prompt is at generation time.
PROMPTS = [[2, 5, 6, 4], [2, 9, 10, 11, 12, 4]]
T, K, NEW, EOS, PAD = 7, 5, 4, 1, 0

prefill = jax.jit(fastv.fastv_prefill,
                  static_argnames=("vlm", "k", "layer", "cache_size"))
extend = jax.jit(fastv.fastv_extend, static_argnames=("vlm", "layer"))


def _vlm(depth):
  """Depth 2: the MQA tiny model. Depth 4: the GQA one (2 KV heads of 4),
  deep enough for layers on both sides of r = 2."""
  cfg = get_variant("tiny" if depth == 2 else "tiny-gqa")
  return VLM(cfg.replace(llm=dataclasses.replace(cfg.llm, depth=depth)),
             scan_layers=False)


@pytest.fixture(scope="module")
def models():
  """depth -> (per-layer VLM, params, the full model's Sequence (B = 2))."""
  out = {}
  for depth in (2, 4):
    vlm = _vlm(depth)
    params = jax.jit(vlm.init_params)(jax.random.key(depth))
    s, n = vlm.image_size, vlm.num_visual_tokens
    images = jax.random.uniform(jax.random.key(10 + depth), (2, s, s, 3),
                                minval=-1.0, maxval=1.0)
    tokens = np.zeros((2, T), np.int32)
    mask = np.zeros((2, T), bool)
    for i, p in enumerate(PROMPTS):
      tokens[i, :len(p)], mask[i, :len(p)] = p, True
    visual = vlm.project(params, vlm.encode_image(params, images))
    seq = vlm.sequence(params, visual, grid_index(2, n), n,
                       jnp.asarray(tokens), jnp.asarray(mask),
                       jnp.zeros((2, T), jnp.int32))
    out[depth] = (vlm, params, seq)
  return out


def _masked_reference(vlm, params, seq, i, new_tokens, layer, kept):
  """Example i's real prompt + new_tokens (S,) through the full model, one
  block at a time; blocks >= layer see only the kept visual columns. Returns
  the logits of rows real-1 .. real-1+S (prefill's, then each step's)."""
  n, depth = seq.text_start, vlm.config.llm.depth
  real = int(seq.input_mask[i].sum())
  steps = len(new_tokens)
  x = jnp.concatenate([seq.embeddings[i:i + 1, :real], vlm.embed_text(
      params, jnp.asarray(new_tokens, jnp.int32)[None])], 1)
  last = seq.positions[i, real - 1]
  positions = jnp.concatenate([seq.positions[i:i + 1, :real],
                               last + 1 + jnp.arange(steps)[None]], 1)
  mask_ar = jnp.concatenate([seq.mask_ar[i:i + 1, :real],
                             jnp.ones((1, steps), jnp.int32)], 1)
  mask = make_attention_mask(jnp.ones((1, real + steps), bool), mask_ar)
  visible = np.ones(real + steps, bool)
  visible[:n] = False
  visible[np.asarray(kept[i])] = True
  hidden_mask = mask & jnp.asarray(visible)[None, None, :]
  h = x
  for j in range(depth):
    h, _ = vlm.run_llm(params, h, positions,
                       mask if j < layer else hidden_mask, layers=(j, j + 1),
                       final_norm=j == depth - 1)
  return np.asarray(vlm.logits(params, h))[0, real - 1:]


def _rope(x, positions, base):
  """NumPy RoPE, halves convention: x (S, H, E), positions (S,)."""
  e = x.shape[-1]
  freq = base ** (-np.arange(0, e, 2) / e)
  angle = positions[:, None, None] * freq
  x1, x2 = x[..., :e // 2], x[..., e // 2:]
  return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                         x2 * np.cos(angle) + x1 * np.sin(angle)], -1)


def _last_prompt_attention(vlm, params, seq, layer):
  """(B, H, L) float64: block layer-1's attention probabilities of each
  example's last real row, from its own q / k weights in NumPy."""
  c = vlm.config.llm
  if layer > 1:
    h, _ = vlm.run_llm(params, seq.embeddings, seq.positions,
                       seq.attention_mask(), layers=(0, layer - 1),
                       final_norm=False)
  else:
    h = seq.embeddings
  h = np.asarray(h, np.float64)
  p = params["llm"][f"layers_{layer - 1}"]
  scale = np.asarray(p["pre_attention_norm"]["scale"], np.float64)
  y = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + c.rms_norm_eps)
  y = y * (1 + scale)
  wq = np.asarray(p["attn"]["q_einsum"]["w"], np.float64)       # (H, D, E)
  wk = np.asarray(p["attn"]["kv_einsum"]["w"], np.float64)[0]   # (Hkv, D, E)
  mask = np.asarray(seq.attention_mask())
  last = np.asarray(seq.last_real_row())
  pos = np.asarray(seq.positions, np.float64)
  g = c.num_heads // c.num_kv_heads
  out = []
  for b in range(y.shape[0]):
    q = _rope(np.einsum("sd,hde->she", y[b], wq), pos[b], c.rope_base)
    k = _rope(np.einsum("sd,hde->she", y[b], wk), pos[b], c.rope_base)
    k = np.repeat(k, g, axis=1)            # Query head h reads KV head h // G.
    logits = np.einsum("he,she->hs", q[last[b]], k) / np.sqrt(c.head_dim)
    logits = np.where(mask[b, last[b]][None], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    out.append(probs / probs.sum(-1, keepdims=True))
  return np.stack(out)


def test_decoder_options_match_the_plain_forward(models):
  vlm, params, seq = models[4]
  mask = seq.attention_mask()
  args = (params, seq.embeddings, seq.positions, mask)
  plain, kv = vlm.run_llm(*args)
  same, _ = vlm.run_llm(*args, layers=(0, 4))
  np.testing.assert_array_equal(same, plain)
  last = seq.last_real_row()
  with_row, _, probs = vlm.run_llm(*args, attention_of=(1, last))
  np.testing.assert_array_equal(with_row, plain)
  probs = np.asarray(probs)
  assert probs.shape == (2, vlm.config.llm.num_heads, seq.length)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  padding = ~np.asarray(seq.input_mask)[:, None, :]
  assert padding.any() and (probs * padding == 0).all()
  h, kv_a = vlm.run_llm(*args, layers=(0, 2), final_norm=False)
  split, kv_b = vlm.run_llm(params, h, seq.positions, mask, layers=(2, 4))
  np.testing.assert_allclose(split, plain, atol=1e-6, rtol=0)
  assert kv_a.depth == kv_b.depth == 2
  np.testing.assert_allclose(kv_b.k[1], kv.k[3], atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match=r"0 <= start < stop <= 4"):
    vlm.run_llm(*args, layers=(2, 5))
  with pytest.raises(ValueError, match=r"attention_of layer must be an int "
                     r"in \[2, 4\)"):
    vlm.run_llm(params, h, seq.positions, mask, layers=(2, 4),
                attention_of=(1, last))
  with pytest.raises(ValueError, match="the cache has 4 layers, the blocks "
                     "run 2"):
    vlm.run_llm(params, h, seq.positions, mask, kv, 0, layers=(2, 4))
  scanned = VLM(vlm.config)
  sparams = scanned.init_params(jax.random.key(0))
  with pytest.raises(ValueError, match="needs the per-layer layout"):
    scanned.run_llm(sparams, *args[1:], layers=(0, 2))
  with pytest.raises(ValueError, match="needs the per-layer layout"):
    scanned.run_llm(sparams, *args[1:], attention_of=(1, last))


@pytest.mark.parametrize("depth, layer", [(2, 1), (4, 2)])
def test_keeping_every_token_is_the_full_model(models, depth, layer):
  vlm, params, seq = models[depth]
  n = vlm.num_visual_tokens
  size = seq.length + NEW
  logits, _, _, pos, kept = prefill(vlm, params, seq, k=n, layer=layer,
                                    cache_size=size)
  ref_logits, _, _, ref_pos = decode.prefill(vlm, params, seq, size)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(pos, ref_pos)
  np.testing.assert_array_equal(kept, np.tile(np.arange(n), (2, 1)))
  kw = dict(max_new_tokens=NEW, eos_id=EOS, pad_id=PAD)
  for sampling in ({}, dict(temperature=8.0, top_p=0.95,
                            rng=jax.random.key(3))):
    tokens, kept = fastv.fastv_decode(vlm, params, seq, k=n, layer=layer,
                                      **kw, **sampling)
    ref = decode.decode(vlm, params, seq, **kw, **sampling)
    np.testing.assert_array_equal(tokens, ref)
    np.testing.assert_array_equal(kept, np.tile(np.arange(n), (2, 1)))
  # The sampled run is not the greedy one (else it would test nothing new).
  assert not np.array_equal(ref, decode.decode(vlm, params, seq, **kw))


@pytest.mark.parametrize("depth, layer", [(2, 1), (4, 1), (4, 2), (4, 3)])
def test_pruned_decoding_equals_the_masked_full_model(models, depth, layer):
  vlm, params, seq = models[depth]
  tokens, kept = fastv.fastv_decode(vlm, params, seq, k=K, layer=layer,
                                    max_new_tokens=NEW, eos_id=-1,
                                    pad_id=PAD)
  tokens, kept = np.asarray(tokens), np.asarray(kept)
  assert kept.shape == (2, K) and (np.diff(kept, axis=1) > 0).all()
  assert not (kept == np.arange(K)).all()       # A real selection.
  # Cached FastV, teacher-forced with its own greedy tokens.
  size = seq.length + NEW
  logits, caches, masks, pos, kept2 = prefill(vlm, params, seq, k=K,
                                              layer=layer, cache_size=size)
  np.testing.assert_array_equal(kept2, kept)
  cached = [np.asarray(logits)]
  for t in range(NEW - 1):
    pos = pos + 1
    logits, caches, masks = extend(vlm, params, jnp.asarray(tokens[:, t]),
                                   pos, caches, masks, seq.length + t,
                                   layer=layer)
    cached.append(np.asarray(logits))
  cached = np.stack(cached, 1)                                  # (B, NEW, V)
  for i in range(2):
    ref = _masked_reference(vlm, params, seq, i, tokens[i, :NEW - 1], layer,
                            kept)
    np.testing.assert_allclose(cached[i], ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(tokens[i], ref.argmax(-1))
  # Pruning changed the model's output (else the test could not tell).
  full = np.asarray(decode.prefill(vlm, params, seq, size)[0])
  assert np.abs(full - cached[:, 0]).max() > 1e-3


@pytest.mark.parametrize("depth, layer", [(2, 1), (4, 2), (4, 3)])
def test_kept_are_the_top_k_of_the_last_prompt_tokens_attention(
    models, depth, layer):
  vlm, params, seq = models[depth]
  n = vlm.num_visual_tokens
  ref = _last_prompt_attention(vlm, params, seq, layer)         # (B, H, L)
  _, _, probs = vlm.run_llm(params, seq.embeddings, seq.positions,
                            seq.attention_mask(), layers=(0, layer),
                            final_norm=False,
                            attention_of=(layer - 1, seq.last_real_row()))
  np.testing.assert_allclose(probs, ref, atol=1e-6, rtol=0)
  scores = ref[:, :, :n].mean(1)                                # (B, N)
  expected = np.sort(np.argsort(-scores, axis=1, kind="stable")[:, :K], 1)
  kept = prefill(vlm, params, seq, k=K, layer=layer,
                 cache_size=seq.length)[4]
  np.testing.assert_array_equal(kept, expected)
  assert not np.array_equal(expected[0], expected[1])  # Per example.


def test_pruned_layers_cache_only_the_kept_rows(models):
  vlm, params, seq = models[4]
  n, size = vlm.num_visual_tokens, seq.length + NEW
  _, (full, pruned), (full_mask, pruned_mask), _, _ = prefill(
      vlm, params, seq, k=K, layer=1, cache_size=size)
  assert (full.depth, full.size) == (1, size)
  assert (pruned.depth, pruned.size) == (3, size - (n - K))
  assert pruned.k[0].shape[0] == 2 and full_mask.shape == (2, size)
  real = np.asarray(seq.input_mask).sum(1)
  np.testing.assert_array_equal(np.asarray(full_mask).sum(1), real)
  np.testing.assert_array_equal(np.asarray(pruned_mask).sum(1),
                                real - (n - K))


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer=0), r"layer must be an int in \[1, 4\)"),
    (dict(layer=4), r"layer must be an int in \[1, 4\)"),
    (dict(k=0), r"k must be an int in \[1, 16\]"),
    (dict(k=17), r"k must be an int in \[1, 16\]"),
    (dict(k=2.5), r"k must be an int in \[1, 16\]"),
    (dict(cache_size=5), "cache_size=5 is smaller"),
])
def test_bad_arguments(models, kwargs, match):
  vlm, params, seq = models[4]
  kw = {**dict(k=K, layer=2, cache_size=seq.length), **kwargs}
  with pytest.raises(ValueError, match=match):
    fastv.fastv_prefill(vlm, params, seq, **kw)


def test_scanned_layout_is_refused(models):
  vlm, params, seq = models[2]
  with pytest.raises(ValueError, match="scan_layers=False"):
    fastv.fastv_prefill(VLM(vlm.config), params, seq, k=K, layer=1,
                        cache_size=seq.length)
