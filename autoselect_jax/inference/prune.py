"""The deployed prefix: encode, score, static top-K, gather, project, sequence.

Selection takes scores from any source. A score function is a hashable
callable `score_fn(score_params, features (B, N, Dv)) -> (B, N)`, passed to
jit as a static argument while its params are traced: the learned AutoSelect
Scorer (`LearnedScores`) today, training-free baselines (feature norm,
attention, random) as further score functions later.

The sequence itself is `method.selection.selected_sequence`, the same
function validation and the demo's evaluation use.

Axes: B batch, N visual tokens, K kept, T text, Dv vision width, D LLM width.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from autoselect_jax.method.modules import Scorer
from autoselect_jax.method.selection import (POSITION_POLICIES, select_topk,
                                             selected_sequence)
from autoselect_jax.models import VLM, Sequence, grid_index

ScoreFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class LearnedScores:
  """The trained AutoSelect Scorer as a score function."""
  scorer: Scorer

  def __call__(self, params, features):
    return self.scorer.apply({"params": params}, features)


def select(score_fn: Optional[ScoreFn], score_params, features, k: int):
  """(B, N, Dv) -> (B, K) int32 kept indices, ascending.

  k = N keeps every token without scoring (top-N of any scores is 0..N-1).
  """
  b, n = features.shape[:2]
  if k == n:
    return grid_index(b, n)
  if score_fn is None:
    raise ValueError(f"k={k} < N={n} needs a score function")
  s = score_fn(score_params, features)
  if s.shape != (b, n):
    raise ValueError(f"score function returned shape {s.shape}, expected "
                     f"(B, N) = {(b, n)}")
  return select_topk(s.astype(jnp.float32), k)


def pruned_prefix(vlm: VLM, params, images, tokens, input_mask, mask_ar, *,
                  k: int, score_fn: Optional[ScoreFn] = None,
                  score_params=None, policy: str = "original"
                  ) -> tuple[Sequence, jax.Array]:
  """images (B, H, W, 3), text (B, T) -> (the LLM's Sequence over K kept
  tokens, kept indices (B, K) int32 ascending).

  Positions follow `policy` (`method.selection.kept_positions`). With k = N
  this is the full model's sequence (no score function needed).
  """
  if policy not in POSITION_POLICIES:
    raise ValueError(f"position policy must be one of {POSITION_POLICIES}, "
                     f"got {policy!r}")
  features = vlm.encode_image(params, images)                   # (B, N, Dv)
  idx = select(score_fn, score_params, features, k)             # (B, K)
  seq = selected_sequence(vlm, params, features, idx, tokens, input_mask,
                          mask_ar, policy)
  return seq, idx


jit_pruned_prefix = jax.jit(
    pruned_prefix, static_argnames=("vlm", "k", "score_fn", "policy"))


def full_prefix(vlm: VLM, params, images, tokens, input_mask, mask_ar
                ) -> Sequence:
  """The unpruned model's sequence: all N visual tokens at 0..N-1."""
  return pruned_prefix(vlm, params, images, tokens, input_mask, mask_ar,
                       k=vlm.num_visual_tokens)[0]
