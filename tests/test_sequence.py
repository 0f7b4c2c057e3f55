"""One owner for the LLM's input sequence: every path that builds
[visual ; text] gives the same logits for the same kept tokens.

Paths compared at K < N under both position policies:
  validation  `method.inference_logits` (hard top-K, the training system's
              validation loss),
  deployed    `inference.prune.jit_pruned_prefix` + KV-cache prefill of the
              prompt, then teacher-forced `decode.extend` steps over the
              suffix (what `generate` runs),
  demo        `demo.evaluate.selection_logits` (the demo's exact match).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_autoselect

from autoselect_jax import inference_logits
from autoselect_jax.demo import evaluate as demo_eval
from autoselect_jax.inference import decode
from autoselect_jax.inference.prune import jit_pruned_prefix
from autoselect_jax.inference.pruners import LearnedScores, scores_pruner
from autoselect_jax.models import Sequence, next_token_nll

K = 5
# [<bos> prefix "\n"] [suffix <eos>]: prompts of 3 and 4 tokens, suffixes of
# 4 and 3, right-padded to T = 8.
PROMPTS = [[2, 5, 6], [2, 9, 10, 11]]
SUFFIXES = [[7, 8, 12, 1], [13, 14, 1]]


@pytest.fixture(scope="module")
def setup():
  method, params, frozen, images = tiny_autoselect("tiny-gqa")
  t = 8
  tokens = np.zeros((2, t), np.int32)
  input_mask = np.zeros((2, t), bool)
  mask_ar = np.zeros((2, t), np.int32)
  for i, (p, s) in enumerate(zip(PROMPTS, SUFFIXES)):
    tokens[i, :len(p) + len(s)] = p + s
    input_mask[i, :len(p) + len(s)] = True
    mask_ar[i, len(p):len(p) + len(s)] = 1
  return method, params, frozen, images, dict(
      tokens=jnp.asarray(tokens), input_mask=jnp.asarray(input_mask),
      mask_ar=jnp.asarray(mask_ar), loss_mask=jnp.asarray(mask_ar))


def _validation(method, params, frozen, images, text, policy):
  logits = jax.jit(lambda p, f, x, t: inference_logits(
      method, p, f, x, t, K, policy))(params, frozen, images, text)
  t = text["tokens"].shape[1]
  return np.asarray(logits[:, K - 1:K + t - 1])  # Rows predicting text.


def _deployed(method, params, frozen, images, text, policy):
  """Prefill each example's prompt, then extend with its suffix tokens one
  at a time: the logits that predicted each suffix token (B, T, V), and the
  kept indices. Rows of prompt targets stay NaN."""
  vlm = method.vlm
  b, t = text["tokens"].shape
  lp = max(len(p) for p in PROMPTS)
  prompt = np.zeros((b, lp), np.int32)
  pmask = np.zeros((b, lp), bool)
  for i, p in enumerate(PROMPTS):
    prompt[i, :len(p)], pmask[i, :len(p)] = p, True
  seq, kept = jit_pruned_prefix(
      vlm, frozen, images, jnp.asarray(prompt), jnp.asarray(pmask),
      jnp.zeros((b, lp), jnp.int32), k=K, pruner=scores_pruner(
          "autoselect", LearnedScores(method.scorer)),
      pruner_params=params["scorer"], policy=policy)
  steps = max(len(s) for s in SUFFIXES)
  logits, cache, cache_mask, pos = jax.jit(
      decode.prefill, static_argnums=(0, 3))(vlm, frozen, seq,
                                              seq.length + steps)
  out = np.full((b, t, logits.shape[-1]), np.nan, np.float32)
  extend = jax.jit(decode.extend, static_argnums=0)
  for j in range(steps):
    for i, (p, s) in enumerate(zip(PROMPTS, SUFFIXES)):
      if j < len(s):
        out[i, len(p) + j] = np.asarray(logits[i])
    token = jnp.asarray([s[j] if j < len(s) else 0 for s in SUFFIXES])
    pos = pos + 1
    logits, cache, cache_mask = extend(vlm, frozen, token, pos, cache,
                                       cache_mask, seq.length + j)
  return out, np.asarray(kept)


@pytest.mark.parametrize("policy", ["original", "packed"])
def test_validation_deployed_and_demo_logits_agree(setup, policy):
  method, params, frozen, images, text = setup
  val = _validation(method, params, frozen, images, text, policy)
  dep, kept = _deployed(method, params, frozen, images, text, policy)
  assert kept.shape == (2, K) and (np.diff(kept, axis=1) > 0).all()
  assert not (kept == np.arange(K)).all()  # A real selection, not 0..K-1.
  features = jax.jit(method.vlm.encode_image)(frozen, images)
  demo = np.asarray(jax.jit(demo_eval.selection_logits,
                            static_argnums=(0, 7))(
      method.vlm, frozen, features, jnp.asarray(kept), text["tokens"],
      text["input_mask"], text["mask_ar"], policy))
  suffix = np.asarray(text["loss_mask"]).astype(bool)
  np.testing.assert_allclose(demo, val, atol=1e-5, rtol=0)
  np.testing.assert_allclose(dep[suffix], val[suffix], atol=1e-4, rtol=0)
  # The two policies really differ (else this test could not tell them apart).
  other = "packed" if policy == "original" else "original"
  assert np.abs(_validation(method, params, frozen, images, text, other)
                - val).max() > 1e-3


def test_sequence_rows_and_last_real_row():
  seq = Sequence(embeddings=jnp.zeros((2, 6, 4)),
                 positions=jnp.zeros((2, 6), jnp.int32),
                 input_mask=jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool),
                 mask_ar=jnp.zeros((2, 6), jnp.int32), text_start=2)
  np.testing.assert_array_equal(seq.last_real_row(), [3, 5])
  hidden = jnp.arange(12.0).reshape(1, 12, 1) * jnp.ones((2, 1, 1))
  rows = seq.text_predictors(hidden[:, :6], 4)
  np.testing.assert_array_equal(rows[0, :, 0], [1, 2, 3, 4])
  with pytest.raises(ValueError, match="overrun"):
    seq.text_predictors(hidden[:, :6], 5)
  leaves = jax.tree_util.tree_leaves(seq)
  assert len(leaves) == 4  # text_start is static, not a leaf.


def test_next_token_nll_matches_a_hand_computation():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  tokens = np.array([[1, 4, 0], [2, 2, 3]])
  w = np.array([[1, 1, 0], [0, 1, 1]], bool)
  total, count = next_token_nll(jnp.asarray(logits), jnp.asarray(tokens),
                                jnp.asarray(w))
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  nll = lse - np.take_along_axis(logits, tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(total, (nll * w).sum(), rtol=1e-6)
  assert float(count) == 4
