"""Training-free selections (autoselect_jax/baselines.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import baselines

N, D = 16, 6
X = jax.random.normal(jax.random.key(0), (3, N, D))


def _divprune_numpy(x, k):
  """The greedy max-min rule written out with loops, float64."""
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  dist = 1.0 - x @ x.T
  n = len(x)
  nearest = [min(dist[i, j] for j in range(n) if j != i) for i in range(n)]
  chosen = [int(np.argmax(nearest))]
  while len(chosen) < k:
    gaps = [-np.inf if i in chosen else min(dist[i, j] for j in chosen)
            for i in range(n)]
    chosen.append(int(np.argmax(gaps)))
  return sorted(chosen)


@pytest.mark.parametrize("k", [1, 5, N])
def test_every_selection_is_ascending_distinct_and_in_range(k):
  outs = [baselines.random_select(X, k, jax.random.key(1)),
          baselines.grid_select(X, k), baselines.norm_select(X, k),
          baselines.divprune_select(X, k)]
  for idx in map(np.asarray, outs):
    assert idx.shape == (3, k) and idx.dtype == np.int32
    assert idx.min() >= 0 and idx.max() < N
    assert (np.diff(idx, axis=1) > 0).all()


def test_divprune_matches_the_greedy_rule():
  x = np.asarray(X, np.float64)
  for k in (2, 5, 9):
    got = np.asarray(jax.jit(baselines.divprune_select,
                             static_argnums=1)(X, k))
    for b in range(3):
      assert got[b].tolist() == _divprune_numpy(x[b], k)


def test_divprune_prefers_distinct_tokens():
  """Three copies of one direction and three of another, plus noise tokens:
  the two first picks are never copies of each other."""
  base = np.eye(D, dtype=np.float32)
  x = np.stack([base[0]] * 3 + [base[1]] * 3 + [base[2] + base[3]]
               + [base[4]] * 9)[None]
  idx = np.asarray(baselines.divprune_select(jnp.asarray(x), 4))[0]
  groups = {0: {0, 1, 2}, 1: {3, 4, 5}, 2: {6}, 3: set(range(7, 16))}
  hit = [next(g for g, s in groups.items() if i in s) for i in idx]
  assert sorted(hit) == [0, 1, 2, 3]


def test_norm_and_grid():
  norms = np.linalg.norm(np.asarray(X), axis=-1)
  np.testing.assert_array_equal(baselines.norm_select(X, 4),
                                np.sort(np.argsort(-norms)[:, :4], axis=1))
  # 4 of a 4 x 4 grid: the centres of the four 2 x 2 quadrants' cells.
  assert baselines.grid_indices(16, 4).tolist() == [5, 7, 13, 15]
  assert baselines.grid_indices(16, 16).tolist() == list(range(16))
  got = baselines.grid_indices(256, 64)  # 8 x 8 of 16 x 16: every other cell.
  rows, cols = np.divmod(np.asarray(got), 16)
  assert sorted(set(rows)) == list(range(1, 16, 2)) == sorted(set(cols))


def test_random_is_seeded_and_errors_are_clear():
  a = baselines.random_select(X, 5, jax.random.key(3))
  np.testing.assert_array_equal(a, baselines.random_select(X, 5,
                                                           jax.random.key(3)))
  assert not np.array_equal(a, baselines.random_select(X, 5,
                                                       jax.random.key(4)))
  with pytest.raises(ValueError, match="square token grid"):
    baselines.grid_indices(12, 4)
  with pytest.raises(ValueError, match="1 <= k <= N"):
    baselines.divprune_select(X, N + 1)
  with pytest.raises(ValueError, match=r"features must be \(B, N, D\)"):
    baselines.norm_select(X[0], 2)
