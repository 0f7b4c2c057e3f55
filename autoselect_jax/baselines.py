"""Training-free token selections on the vision encoder's output.

Each is a selection function `f(features (B, N, D), k, ...) -> (B, K)` int32
kept indices, ascending (grid order), distinct, so it plugs into the same
static-K path as the learned Scorer (`method.selection.selected_sequence`).
K is a static Python int.

  random_select   K uniformly at random per example (seeded).
  grid_select     a uniform spatial subsample of the sqrt(N) x sqrt(N) grid.
  norm_select     the K largest L2 norms of the encoder output.
  divprune_select greedy max-min cosine diversity (DivPrune, Alvar et al.,
                  CVPR 2025): first the token whose nearest other token is
                  farthest, then repeatedly the token farthest (in cosine
                  distance) from the selected set.

Axes: B batch, N visual tokens, K kept, D width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from autoselect_jax.method.lapsum import _check_k
from autoselect_jax.method.selection import select_topk

__all__ = ["random_select", "grid_select", "norm_select", "divprune_select",
           "grid_indices"]


def _check_features(features):
  if features.ndim != 3:
    raise ValueError(f"features must be (B, N, D), got shape "
                     f"{features.shape}")
  return features.shape[0], features.shape[1]


def random_select(features, k: int, rng):
  """(B, N, D) -> (B, K): K tokens uniformly at random, per example."""
  b, n = _check_features(features)
  return select_topk(jax.random.uniform(rng, (b, n)), k)


def grid_indices(n: int, k: int):
  """(K,) int32 ascending: a uniform spatial subsample of a g x g grid
  (g = sqrt(n)). Rows r x columns c with r * c >= k as square as possible,
  at evenly spaced cell centres; the first k in raster order are kept."""
  g = math.isqrt(n)
  if g * g != n:
    raise ValueError(f"grid selection needs a square token grid, N={n}")
  k = _check_k(k, n)
  rows = math.ceil(math.sqrt(k))
  cols = math.ceil(k / rows)
  r = (jnp.arange(rows) * g + g // 2) // rows     # Centres of row bands.
  c = (jnp.arange(cols) * g + g // 2) // cols
  idx = (r[:, None] * g + c[None, :]).reshape(-1)[:k]
  return jnp.sort(idx).astype(jnp.int32)


def grid_select(features, k: int):
  """(B, N, D) -> (B, K): the same uniform grid subsample for every image."""
  b, n = _check_features(features)
  return jnp.broadcast_to(grid_indices(n, k), (b, k))


def norm_select(features, k: int):
  """(B, N, D) -> (B, K): the K tokens with the largest L2 norm."""
  _check_features(features)
  norms = jnp.linalg.norm(features.astype(jnp.float32), axis=-1)
  return select_topk(norms, k)


def divprune_select(features, k: int):
  """(B, N, D) -> (B, K): greedy max-min cosine-distance selection.

  Distance d(i, j) = 1 - cos(x_i, x_j). Step 0 takes argmax_i min_{j != i}
  d(i, j); step t takes argmax over unselected i of min over selected j of
  d(i, j). Ties go to the lower index. O(N^2 D) for the distance matrix,
  then O(K N).
  """
  b, n = _check_features(features)
  k = _check_k(k, n)
  x = features.astype(jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  dist = 1.0 - jnp.einsum("bnd,bmd->bnm", x, x)                 # (B, N, N)
  eye = jnp.eye(n, dtype=bool)
  nearest = jnp.min(jnp.where(eye, jnp.inf, dist), axis=-1)     # (B, N)
  first = jnp.argmax(nearest, axis=-1)                          # (B,)
  rows = jnp.arange(b)

  def step(t, state):
    chosen, taken, gap = state     # (B, K), (B, N) bool, (B, N) min distance
    nxt = jnp.argmax(jnp.where(taken, -jnp.inf, gap), axis=-1)
    chosen = chosen.at[:, t].set(nxt)
    taken = taken.at[rows, nxt].set(True)
    gap = jnp.minimum(gap, dist[rows, nxt])
    return chosen, taken, gap

  chosen = jnp.zeros((b, k), jnp.int32).at[:, 0].set(first)
  taken = jnp.zeros((b, n), bool).at[rows, first].set(True)
  gap = dist[rows, first]
  chosen, _, _ = jax.lax.fori_loop(1, k, step, (chosen, taken, gap))
  return jnp.sort(chosen, axis=-1).astype(jnp.int32)
