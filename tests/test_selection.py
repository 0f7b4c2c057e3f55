"""Hard top-K selection, gather, position ids and the selected sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import (gather_tokens, kept_positions, select_topk,
                            selected_sequence)
from autoselect_jax.models import VLM, get_variant, positions_from_mask
from autoselect_jax.models.sequence import text_positions


def test_select_topk_keeps_original_order_and_the_top_set():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(3, 20)).astype(np.float32)
  for k in (1, 7, 20):
    idx = np.asarray(select_topk(jnp.asarray(s), k))
    assert idx.shape == (3, k) and idx.dtype == np.int32
    for row, sc in zip(idx, s):
      assert np.all(np.diff(row) > 0)                     # ascending, distinct
      np.testing.assert_array_equal(row, np.sort(np.argsort(-sc)[:k]))


def test_select_topk_ties_give_k_distinct():
  idx = np.asarray(select_topk(jnp.zeros((2, 10)), 4))
  for row in idx:
    assert len(set(row.tolist())) == 4 and np.all(np.diff(row) > 0)
  idx = np.asarray(select_topk(jnp.array([[1.0, 5.0, 5.0, 5.0, 0.0]]), 2))
  assert idx.tolist() == [[1, 2]]


def test_gather_tokens():
  x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
  idx = jnp.array([[0, 3], [1, 4]])
  out = gather_tokens(x, idx)
  np.testing.assert_array_equal(out, np.stack([x[0, [0, 3]], x[1, [1, 4]]]))


def test_positions_original_and_packed():
  idx = jnp.array([[1, 4, 6], [0, 2, 7]])
  index, span = kept_positions(idx, 8, "original")
  np.testing.assert_array_equal(index, idx)
  assert span == 8
  index, span = kept_positions(idx, 8, "packed")
  np.testing.assert_array_equal(index, [[0, 1, 2]] * 2)
  assert span == 3


def test_sequence_positions_follow_the_policy():
  """[kept ; text] positions: text from span on, padding repeats the last."""
  vlm = VLM(get_variant("tiny"))
  params = vlm.init_params(jax.random.key(0))
  idx = jnp.array([[1, 4, 6], [0, 2, 7]])
  tokens = jnp.array([[2, 5, 6, 0], [2, 5, 0, 0]])
  mask = tokens != 0
  feats = jnp.zeros((2, 16, 32))
  for policy, want in (
      ("original", [[1, 4, 6, 16, 17, 18, 18], [0, 2, 7, 16, 17, 17, 17]]),
      ("packed", [[0, 1, 2, 3, 4, 5, 5], [0, 1, 2, 3, 4, 4, 4]])):
    seq = selected_sequence(vlm, params, feats, idx, tokens, mask,
                            jnp.zeros_like(tokens), policy)
    np.testing.assert_array_equal(seq.positions, want)
    assert seq.text_start == 3
    np.testing.assert_array_equal(seq.input_mask[:, 3:], mask)


def test_positions_with_all_tokens_kept_match_the_full_layout():
  n = 6
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
  idx = jnp.broadcast_to(jnp.arange(n), (2, n))
  full = positions_from_mask(jnp.concatenate([jnp.ones((2, n), bool), mask], 1))
  for policy in ("original", "packed"):
    index, span = kept_positions(idx, n, policy)
    got = jnp.concatenate([index, text_positions(mask, span)], 1)
    np.testing.assert_array_equal(got, full)


def test_bad_inputs():
  s = jnp.zeros((2, 8))
  with pytest.raises(ValueError, match="1 <= k <= N"):
    select_topk(s, 0)
  with pytest.raises(ValueError, match="1 <= k <= N"):
    select_topk(s, 9)
  with pytest.raises(ValueError, match="Python int"):
    select_topk(s, 3.0)
  with pytest.raises(ValueError, match=r"scores must be \(B, N\)"):
    select_topk(s[0], 3)
  with pytest.raises(ValueError, match=r"idx must be \(B, K\) with B = 2"):
    gather_tokens(jnp.zeros((2, 8, 4)), jnp.zeros((3, 2), jnp.int32))
  idx = jnp.array([[0, 1]])
  with pytest.raises(ValueError, match="position policy must be one of"):
    kept_positions(idx, 8, "shuffled")
  with pytest.raises(ValueError, match="1 <= K <= N"):
    kept_positions(idx, 1, "original")
