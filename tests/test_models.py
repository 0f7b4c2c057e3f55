"""Model code without the reference: masks, configs, variants, dtypes, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax.models import (VARIANTS, VLM, PaliGemmaConfig, get_variant,
                                   make_attention_mask, positions_from_mask)


def test_prefix_lm_mask():
  input_mask = jnp.array([[1, 1, 1, 1, 1, 0]], bool)
  mask_ar = jnp.array([[0, 0, 0, 1, 1, 1]])
  m = np.asarray(make_attention_mask(input_mask, mask_ar))[0].astype(int)
  expected = np.array([[1, 1, 1, 0, 0, 0],   # prefix: bidirectional
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],   # suffix: causal
                       [1, 1, 1, 1, 1, 0],
                       [1, 1, 1, 1, 1, 0]])  # padding sees real tokens only
  np.testing.assert_array_equal(m, expected)
  np.testing.assert_array_equal(positions_from_mask(input_mask),
                                [[0, 1, 2, 3, 4, 4]])


def test_suffix_cannot_see_the_future_prefix_sees_all_of_prefix():
  vlm = VLM(get_variant("tiny"))
  params = vlm.init_params(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3), minval=-1)
  tokens = jnp.array([[2, 10, 11, 4, 20, 21, 22]])
  mask_ar = jnp.array([[0, 0, 0, 0, 1, 1, 1]])
  ones = jnp.ones_like(tokens, bool)
  base = vlm.forward(params, images, tokens, ones, mask_ar)
  changed_last = vlm.forward(params, images, tokens.at[0, 6].set(30), ones,
                             mask_ar)
  n = vlm.num_visual_tokens
  # Suffix positions before the change are unaffected; the prefix too.
  np.testing.assert_array_equal(base[:, :n + 6], changed_last[:, :n + 6])
  changed_prefix = vlm.forward(params, images, tokens.at[0, 2].set(30), ones,
                               mask_ar)
  # The prefix is bidirectional: an image token sees a later prefix token.
  assert not np.allclose(base[:, 0], changed_prefix[:, 0])


def test_paligemma_3b_224_parameter_count():
  abstract = VLM(get_variant("paligemma-3b-224")).abstract_params()
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract))
  # SigLIP So400m/14 (27 layers, no head) + projector + Gemma-2B (vocab 257216).
  assert count == 2_923_466_480
  img = abstract["img"]
  assert img["pos_embedding"].shape == (1, 256, 1152)
  assert img["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"][
      "kernel"].shape == (27, 1152, 4304)
  assert abstract["llm"]["layers"]["attn"]["kv_einsum"]["w"].shape == (
      18, 2, 1, 2048, 256)


@pytest.mark.parametrize("name,tokens", [("paligemma-3b-448", 1024),
                                         ("paligemma-3b-896", 4096)])
def test_resolution_variants(name, tokens):
  assert get_variant(name).num_image_tokens == tokens


def test_bfloat16_compute_is_close_to_float32():
  cfg = get_variant("tiny-gqa")
  params = VLM(cfg).init_params(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1)
  tokens = jnp.array([[2, 10, 11, 4], [2, 12, 4, 0]])
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
  ar = jnp.zeros_like(tokens)
  f32 = VLM(cfg).forward(params, images, tokens, mask, ar)
  bf16 = VLM(cfg, jnp.bfloat16).forward(params, images, tokens, mask, ar)
  assert bf16.dtype == jnp.float32  # Logits are always float32.
  assert np.isfinite(np.asarray(bf16)).all()
  scale = float(jnp.abs(f32).max())
  assert float(jnp.abs(f32 - bf16).max()) < 0.05 * scale


def test_bad_inputs_and_configs():
  vlm = VLM(get_variant("tiny"))
  params = vlm.init_params(jax.random.key(0))
  with pytest.raises(ValueError, match=r"images must have shape \(B, 32, 32, 3\)"):
    vlm.encode_image(params, jnp.zeros((1, 64, 64, 3)))
  x = jnp.zeros((1, 3, 32))
  with pytest.raises(ValueError, match="mask must be"):
    vlm.run_llm(params, x, jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3, 4), bool))
  with pytest.raises(ValueError, match="Unknown model variant 'nope'"):
    get_variant("nope")
  with pytest.raises(ValueError, match="not a multiple of patch_size"):
    PaliGemmaConfig.from_dict({"vision": {"image_size": 30, "patch_size": 8}})
  with pytest.raises(ValueError, match="num_heads=8 is not a multiple"):
    PaliGemmaConfig.from_dict({"llm": {"num_heads": 8, "num_kv_heads": 3}})
  with pytest.raises(ValueError, match="unexpected keyword argument 'widht'"):
    PaliGemmaConfig.from_dict({"llm": {"widht": 8}})
  assert set(VARIANTS) >= {"paligemma-3b-224", "paligemma-3b-448",
                           "paligemma-3b-896", "tiny"}


def test_unrolled_layer_scan_gives_the_same_logits():
  """`unroll` is a speed knob only: same params, same logits (bit-identical
  on CPU; GPU kernels fuse differently, 8e-6 measured on an H200)."""
  c = get_variant("tiny")
  scanned, unrolled = VLM(c), VLM(c, unroll=True)
  params = scanned.init_params(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (2, c.vision.image_size,
                                                  c.vision.image_size, 3),
                              minval=-1, maxval=1)
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) + 3
  mask, ar = jnp.ones((2, 6), bool), jnp.zeros((2, 6), jnp.int32)
  np.testing.assert_allclose(
      scanned.forward(params, images, tokens, mask, ar),
      unrolled.forward(params, images, tokens, mask, ar), atol=1e-5, rtol=0)


def test_unstacked_layers_give_the_same_outputs_and_cache():
  """`scan_layers=False` on `unstack_layers(params)` is the same model."""
  from autoselect_jax.inference import decode, prune
  from autoselect_jax.models import unstack_layers
  c = get_variant("tiny-gqa")
  scanned, loose = VLM(c), VLM(c, scan_layers=False)
  params = scanned.init_params(jax.random.key(0))
  flat = unstack_layers(params)
  assert jax.tree_util.tree_structure(flat) == jax.tree_util.tree_structure(
      loose.abstract_params())
  images = jax.random.uniform(jax.random.key(1), (2, c.vision.image_size,
                                                  c.vision.image_size, 3),
                              minval=-1, maxval=1)
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) + 3
  mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2], bool)
  ar = jnp.zeros((2, 6), jnp.int32)
  np.testing.assert_allclose(scanned.forward(params, images, tokens, mask, ar),
                             loose.forward(flat, images, tokens, mask, ar),
                             atol=1e-5, rtol=0)
  # Prefill + one cached step: same logits and caches.
  outs = []
  for vlm, p in ((scanned, params), (loose, flat)):
    prefix = prune.full_prefix(vlm, p, images, tokens, mask, ar)
    logits, cache, cache_mask, pos = decode.prefill(vlm, p, prefix, 40)
    step, cache, _ = decode.extend(vlm, p, jnp.argmax(logits, -1), pos + 1,
                                   cache, cache_mask, prefix.length)
    outs.append((logits, step, *cache.k, *cache.v))
  for a, b in zip(*outs):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="stacked"):
    unstack_layers(flat)
