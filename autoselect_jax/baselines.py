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
  attention_select the K tokens that receive the most attention in the
                  encoder's last block (`LastAttention.received`).
  visionzip_select VisionZip (Yang et al., CVPR 2025): dominant tokens by
                  attention received, plus contextual tokens merged from the
                  rest by key similarity. It returns merged features too:
                  (index (B, K), kept_features (B, K, D)).

The attention statistics come from the encoder:
`vlm.encode_image(params, images, last_attention=True)` ->
`(features, LastAttention(received (B, N), keys (B, N, D)))`.

Axes: B batch, N visual tokens, K kept, D width, C contextual tokens,
R remaining (non-dominant) tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from autoselect_jax.method.lapsum import _check_k
from autoselect_jax.method.selection import select_topk

__all__ = ["random_select", "grid_select", "norm_select", "divprune_select",
           "attention_select", "visionzip_select", "visionzip_split",
           "grid_indices"]

# VisionZip's published setting: 54 dominant + 10 contextual of 64 kept
# (also 108 + 20 of 128 and 162 + 30 of 192: the same ratio).
VISIONZIP_DOMINANT_SHARE = 54 / 64


def _check_features(features):
  if features.ndim != 3:
    raise ValueError(f"features must be (B, N, D), got shape "
                     f"{features.shape}")
  return features.shape[0], features.shape[1]


def _check_scores(name, x, b, n):
  if x.shape != (b, n):
    raise ValueError(f"{name} must be (B, N) = {(b, n)}, got shape {x.shape}")


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

  Checked against DivPrune's code (vbdi/divprune, `LLaVA/llava/model/
  llava_arch.py`, `DivPrune`): its first score, the 2nd-smallest distance
  in a token's column, is the min over the other tokens (the own distance
  is 0); it then takes the argmax over all N tokens without excluding the
  selected ones, which only matters when every remaining token is parallel
  to a selected one (it could pick a token twice; this keeps K distinct).
  It runs on the LLM's input embeddings, i.e. the projected tokens
  (`vlm.project`), so pass those for the published behaviour.
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


def attention_select(features, k: int, *, received):
  """(B, N, D) -> (B, K): the K tokens receiving the most attention.

  received: (B, N), `LastAttention.received` (the last encoder block's
  softmax averaged over heads and queries). Ties go to the lower index.
  """
  b, n = _check_features(features)
  _check_scores("received", received, b, n)
  return select_topk(received.astype(jnp.float32), k)


def visionzip_split(k: int, dominant: int | None = None):
  """(dominant, contextual) token counts for K kept tokens.

  Default: round(K * 54 / 64) (half up) dominant, VisionZip's published
  split, kept within [1, K - 1] so that K >= 2 always has a contextual token;
  K = 1 is one dominant token. An explicit `dominant` may be 0..K.
  """
  if dominant is None:
    dominant = math.floor(k * VISIONZIP_DOMINANT_SHARE + 0.5)
    dominant = max(1, min(dominant, k - 1)) if k >= 2 else k
  elif not 0 <= dominant <= k:
    raise ValueError(f"visionzip: need 0 <= dominant <= K = {k}, got "
                     f"dominant = {dominant}")
  return dominant, k - dominant


def _take(x, idx):
  """(B, N, ...) gathered at (B, M) -> (B, M, ...)."""
  return jax.vmap(lambda row, i: row[i])(x, idx)


def visionzip_select(features, k: int, *, received, keys,
                     dominant: int | None = None, num_heads: int = 1):
  """VisionZip: (B, N, D) -> (index (B, K) int32, kept_features (B, K, D)).

  1. Dominant: the `dominant` tokens receiving the most attention (ties to
     the lower index); their features are kept as they are.
  2. Contextual: the R = N - dominant other tokens, in grid order, with
     C = K - dominant; step = max(1, R // C); the remaining tokens at
     positions 0, step, 2 step, ... (the first C) are targets; every other
     remaining token joins the target whose key is most similar (cosine;
     ties to the first target). A contextual token is target feature + the
     mean of the features that joined it (+ 0 if none did), as VisionZip's
     code computes it; its index is its target's index.
  Output rows are sorted by index (ascending, distinct), the features
  permuted alongside. K = N keeps every token unchanged.

  Args:
    features: (B, N, D), the encoder output before the projector (merging
      happens before projection, as VisionZip merges the CLIP features).
    k: static number of kept tokens.
    received: (B, N), `LastAttention.received`.
    keys: (B, N, Dk), `LastAttention.keys`: the similarity metric.
    dominant: dominant token count; default `visionzip_split(k)`.
    num_heads: VisionZip compares keys averaged over heads (its `metric`);
      pass the encoder's head count to do the same with heads-concatenated
      keys (Dk = H * E). 1 uses the concatenated keys as one vector.
  """
  b, n = _check_features(features)
  k = _check_k(k, n)
  _check_scores("received", received, b, n)
  if keys.ndim != 3 or keys.shape[:2] != (b, n):
    raise ValueError(f"keys must be (B, N, Dk) with (B, N) = {(b, n)}, got "
                     f"shape {keys.shape}")
  if num_heads < 1 or keys.shape[2] % num_heads:
    raise ValueError(f"visionzip: key width {keys.shape[2]} is not divisible "
                     f"by num_heads={num_heads}")
  d, c = visionzip_split(k, dominant)
  top = jax.lax.top_k(received.astype(jnp.float32), d)[1] if d else (
      jnp.zeros((b, 0), jnp.int32))                            # (B, d)
  index, kept = top, _take(features, top)
  if c:
    is_dom = jnp.zeros((b, n), jnp.int32).at[jnp.arange(b)[:, None],
                                              top].set(1)
    rest = jnp.argsort(is_dom, axis=-1, stable=True)[:, :n - d]   # (B, R)
    r = n - d
    step = max(1, r // c)
    is_target = [False] * r
    for p in range(0, r, step)[:c]:
      is_target[p] = True
    targets = rest[:, [p for p in range(r) if is_target[p]]]      # (B, C)
    others = rest[:, [p for p in range(r) if not is_target[p]]]   # (B, R-C)
    metric = keys.astype(jnp.float32)
    metric = metric.reshape(b, n, num_heads, -1).mean(axis=2)
    metric = metric / jnp.maximum(
        jnp.linalg.norm(metric, axis=-1, keepdims=True), 1e-12)
    sim = jnp.einsum("bod,btd->bot", _take(metric, others),
                     _take(metric, targets))                      # (B, R-C, C)
    assign = jax.nn.one_hot(jnp.argmax(sim, axis=-1), c)          # (B, R-C, C)
    counts = jnp.maximum(assign.sum(axis=1), 1.0)[..., None]      # (B, C, 1)
    merged = jnp.einsum("bot,bod->btd", assign,
                        _take(features, others).astype(jnp.float32))
    context = _take(features, targets).astype(jnp.float32) + merged / counts
    index = jnp.concatenate([index, targets], axis=1)
    kept = jnp.concatenate([kept, context.astype(features.dtype)], axis=1)
  order = jnp.argsort(index, axis=-1)
  return (jnp.take_along_axis(index, order, axis=-1).astype(jnp.int32),
          _take(kept, order))
