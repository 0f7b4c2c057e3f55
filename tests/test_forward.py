"""Training and inference forwards through a tiny frozen PaliGemma."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_autoselect

from autoselect_jax import (AutoSelect, Denoiser, Scorer,
                            build_pruned_sequence, inference_logits,
                            soft_topk, train_loss)
from autoselect_jax.method import count_params, encode, loss_from_scores
from autoselect_jax.models import get_variant

N = 16  # tiny: 32 px images, 8 px patches.


@pytest.fixture(scope="module")
def setup():
  method, params, frozen, images = tiny_autoselect("tiny")
  # [<bos> prefix "\n"] [suffix <eos>] [pad]; right padded.
  tokens = jnp.array([[2, 5, 6, 7, 8, 1, 0], [2, 9, 10, 11, 1, 0, 0]])
  input_mask = jnp.array([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]], bool)
  mask_ar = jnp.array([[0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0]])
  text = dict(tokens=tokens, input_mask=input_mask, mask_ar=mask_ar,
              loss_mask=mask_ar)
  return method, params, frozen, images, text


def _full_logits(method, frozen, images, text):
  return jax.jit(method.vlm.forward)(frozen, images, text["tokens"],
                                     text["input_mask"], text["mask_ar"])


def test_k_equals_n_inference_is_the_full_model(setup):
  method, params, frozen, images, text = setup
  full = _full_logits(method, frozen, images, text)
  f = jax.jit(lambda p, fr, x, t: inference_logits(method, p, fr, x, t, N))
  got = f(params, frozen, images, text)
  assert got.shape == full.shape == (2, N + 7, 320)
  np.testing.assert_array_equal(got, full)


def test_pruned_inference_uses_original_features_and_policy(setup):
  method, params, frozen, images, text = setup
  k = 5
  build = jax.jit(lambda x, policy: build_pruned_sequence(
      method, params, frozen, x, text["tokens"], text["input_mask"],
      text["mask_ar"], k, policy), static_argnums=1)
  seq, kept = build(images, "original")
  feats = jax.jit(method.vlm.encode_image)(frozen, images)
  s = jax.jit(method.scorer.apply)({"params": params["scorer"]}, feats)
  idx = np.asarray(kept)
  for b in range(2):
    np.testing.assert_array_equal(idx[b], np.sort(np.argsort(-s[b])[:k]))
  want = jax.jit(method.vlm.project)(frozen,
                                     feats[np.arange(2)[:, None], idx])
  np.testing.assert_allclose(seq.embeddings[:, :k], want, atol=1e-5)
  np.testing.assert_array_equal(seq.positions[:, :k], idx)
  np.testing.assert_array_equal(seq.positions[0, k:], [16, 17, 18, 19, 20,
                                                       21, 21])
  assert seq.input_mask[:, :k].all() and not seq.mask_ar[:, :k].any()
  packed, _ = build(images, "packed")
  np.testing.assert_array_equal(packed.positions[1], [0, 1, 2, 3, 4, 5, 6, 7,
                                                      8, 9, 9, 9])
  np.testing.assert_array_equal(packed.embeddings, seq.embeddings)


def _suffix_ce(logits, text, n):
  """Cross-entropy of the loss_mask targets from whole-sequence logits."""
  logits = np.asarray(logits, np.float64)
  tok, lm = np.asarray(text["tokens"]), np.asarray(text["loss_mask"])
  total, count = 0.0, 0
  for b in range(tok.shape[0]):
    for j in range(tok.shape[1]):
      if lm[b, j]:
        row = logits[b, n + j - 1]
        top = row.max()
        total += np.log(np.exp(row - top).sum()) + top - row[tok[b, j]]
        count += 1
  return total / count, count


def test_train_loss_with_all_tokens_kept_is_the_full_models_loss(setup):
  """k = N: alpha = 1, the gate is the identity and the fresh Denoiser too.
  Fed precomputed features."""
  method, params, frozen, images, text = setup
  want, count = _suffix_ce(_full_logits(method, frozen, images, text), text,
                           N)
  feats = jax.jit(method.vlm.encode_image)(frozen, images)
  loss, aux = jax.jit(lambda p: train_loss(method, p, frozen, feats, text,
                                           jax.random.key(3), N, 1.0))(params)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(aux["num_targets"]) == count == 6
  np.testing.assert_allclose(aux["alpha_kept"], 1.0)


def test_train_gradients_and_frozen_params(setup):
  """Gradients of the training forward (train_loss = encode -> scores ->
  loss_from_scores; a zero offset on the scores exposes dL/ds)."""
  method, params, frozen, images, text = setup
  k = 4

  feats = jax.jit(method.vlm.encode_image)(frozen, images)

  def loss_fn(p, f, delta):
    x = encode(method, f, feats)
    s = method.scorer.apply({"params": p["scorer"]}, x) + delta
    return loss_from_scores(method, p, f, x, s, text, jax.random.key(4), k,
                            2.0)

  (loss, aux), (g, g_frozen, g_s) = jax.jit(jax.value_and_grad(
      loss_fn, argnums=(0, 1, 2), has_aux=True))(params, frozen,
                                                 jnp.zeros((2, N)))
  assert np.isfinite(float(loss))
  # aux: the mean soft weight of each example's k largest and of the rest.
  alpha = np.sort(np.asarray(soft_topk(feats_scores(method, params, feats),
                                       k, 2.0)), axis=-1)[:, ::-1]
  np.testing.assert_allclose(aux["alpha_kept"], alpha[:, :k].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(aux["alpha_dropped"], alpha[:, k:].mean(),
                             rtol=1e-5)
  for leaf in jax.tree_util.tree_leaves(g):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert float(jnp.abs(g["scorer"]["head"]["kernel"]).max()) > 0
  assert float(jnp.abs(g["scorer"]["block_0"]["attn"]["query"]["kernel"]
                       ).max()) > 0
  # The loss gradient reaches every token's score: no dead tokens.
  assert g_s.shape == (2, N) and np.all(np.abs(np.asarray(g_s)) > 0)
  # No gradient reaches the frozen VLM, even when asked for.
  for leaf in jax.tree_util.tree_leaves(g_frozen):
    assert not np.any(np.asarray(leaf))
  # One AdamW step on the trainable tree: frozen params bit-identical.
  frozen_before = jax.tree_util.tree_map(np.array, frozen)
  opt = optax.adamw(1e-3, weight_decay=0.1)
  updates, _ = jax.jit(opt.update)(g, opt.init(params), params)
  new = jax.jit(optax.apply_updates)(params, updates)
  jax.tree_util.tree_map(np.testing.assert_array_equal, frozen, frozen_before)
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree_util.tree_leaves(new["scorer"]),
      jax.tree_util.tree_leaves(params["scorer"]))]
  assert min(moved) > 0


def feats_scores(method, params, feats):
  return jax.jit(method.scorer.apply)({"params": params["scorer"]}, feats)


def test_traced_k_matches_static_k_with_one_compile(setup):
  """k drawn per step is a traced scalar: one program for every K, and the
  same loss, aux and gradients as a static K."""
  method, params, frozen, images, text = setup
  feats = jax.jit(method.vlm.encode_image)(frozen, images)
  rng = jax.random.key(5)

  def loss(p, k):
    return train_loss(method, p, frozen, feats, text, rng, k, 0.7)

  traced = jax.jit(jax.value_and_grad(loss, has_aux=True))
  for k in (3, 8, N):
    (l_t, aux_t), g_t = traced(params, jnp.int32(k))
    (l_s, aux_s), g_s = jax.jit(jax.value_and_grad(
        lambda p: loss(p, k), has_aux=True))(params)
    np.testing.assert_allclose(l_t, l_s, rtol=1e-6)
    for key in aux_s:
      np.testing.assert_allclose(aux_t[key], aux_s[key], rtol=1e-6, atol=1e-7)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-7), g_t, g_s)
  assert traced._cache_size() == 1


def test_param_count_of_the_tiny_config():
  c = count_params(get_variant("tiny"), Scorer(num_heads=4),
                   Denoiser(num_heads=4))
  d, f = 32, 128
  block = 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)
  scorer = 2 * block + 2 * d + d             # head without bias
  denoiser = block - 2 * (d * d + d)            # no query / key
  assert (c["scorer"], c["denoiser"]) == (scorer, denoiser)
  assert c["total"] == scorer + denoiser and c["vlm"] > 0
  # The ablations: global attention adds query / key; no Denoiser, nothing.
  glob = count_params(get_variant("tiny"), Scorer(num_heads=4),
                      Denoiser(num_heads=4, attention="global"))
  assert glob["denoiser"] == block
  none = count_params(get_variant("tiny"), Scorer(num_heads=4), None)
  assert (none["denoiser"], none["total"]) == (0, scorer)


def test_bad_inputs(setup):
  method, params, frozen, images, text = setup
  with pytest.raises(ValueError, match="1 <= k <= N"):
    train_loss(method, params, frozen, images, text, jax.random.key(0), 0, 1.0)
  with pytest.raises(ValueError, match="1 <= k <= N"):
    inference_logits(method, params, frozen, images, text, N + 1)
  with pytest.raises(ValueError, match="Python int"):
    inference_logits(method, params, frozen, images, text, 2.5)
  with pytest.raises(ValueError, match="tau must be a positive"):
    train_loss(method, params, frozen, images, text, jax.random.key(0), 2, 0.0)
  with pytest.raises(ValueError, match=r"features must be \(B, N, Dv\)"):
    train_loss(method, params, frozen, jnp.zeros((2, N, 8)), text,
               jax.random.key(0), 2, 1.0)
  with pytest.raises(ValueError, match="text batch has no 'loss_mask'"):
    train_loss(method, params, frozen, images,
               {k: v for k, v in text.items() if k != "loss_mask"},
               jax.random.key(0), 2, 1.0)
  bad = dict(text, mask_ar=text["mask_ar"][:, :3])
  with pytest.raises(ValueError, match="text mask_ar has shape"):
    inference_logits(method, params, frozen, images, bad, 2)
  with pytest.raises(ValueError, match="text batch size 1 != visual batch"):
    train_loss(method, params, frozen, images,
               {k: v[:1] for k, v in text.items()}, jax.random.key(0), 2, 1.0)
  with pytest.raises(ValueError, match="position_policy must be one of"):
    AutoSelect(method.vlm, position_policy="sorted")
  with pytest.raises(ValueError, match="gate must be one of"):
    AutoSelect(method.vlm, gate="gumbel")
  with pytest.raises(ValueError, match="noise must be a bool"):
    AutoSelect(method.vlm, noise=1)
