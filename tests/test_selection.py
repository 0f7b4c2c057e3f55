"""Hard top-K selection, gather and position ids."""

import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import gather_tokens, kept_positions, select_topk
from autoselect_jax.models import positions_from_mask


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
  pos = kept_positions(idx, 8, 4, "original")
  np.testing.assert_array_equal(pos, [[1, 4, 6, 8, 9, 10, 11],
                                      [0, 2, 7, 8, 9, 10, 11]])
  pos = kept_positions(idx, 8, 4, "packed")
  np.testing.assert_array_equal(pos, [[0, 1, 2, 3, 4, 5, 6]] * 2)
  # With the text's input_mask, padding repeats the last real position.
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  np.testing.assert_array_equal(
      kept_positions(idx, 8, 4, "packed", text_mask=mask),
      [[0, 1, 2, 3, 4, 5, 5], [0, 1, 2, 3, 4, 4, 4]])


def test_positions_with_all_tokens_kept_match_the_full_layout():
  n, t = 6, 5
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
  idx = jnp.broadcast_to(jnp.arange(n), (2, n))
  full = positions_from_mask(jnp.concatenate([jnp.ones((2, n), bool), mask], 1))
  for policy in ("original", "packed"):
    np.testing.assert_array_equal(
        kept_positions(idx, n, t, policy, text_mask=mask), full)


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
    kept_positions(idx, 8, 3, "shuffled")
  with pytest.raises(ValueError, match="1 <= K <= N"):
    kept_positions(idx, 1, 3, "original")
  with pytest.raises(ValueError, match="text_mask must be"):
    kept_positions(idx, 8, 3, "original", text_mask=jnp.ones((1, 4), bool))
