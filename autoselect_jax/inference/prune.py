"""The pruned prefix: encode, score, static top-K, gather, project.

Selection takes scores from any source. A score function is a hashable
callable `score_fn(score_params, features (B, N, Dv)) -> (B, N)`, passed to
jit as a static argument while its params are traced: the learned AutoSelect
Scorer (`LearnedScores`) today, training-free baselines (feature norm,
attention, random) as further score functions later.

Axes: B batch, N visual tokens, K kept, T text, Dv vision width, D LLM width.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from autoselect_jax.inference.decode import Prefix, build_prefix, full_prefix
from autoselect_jax.method.modules import Scorer
from autoselect_jax.method.selection import (POSITION_POLICIES, gather_tokens,
                                             kept_positions, select_topk)
from autoselect_jax.models import VLM

ScoreFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class LearnedScores:
  """The trained AutoSelect Scorer as a score function."""
  scorer: Scorer

  def __call__(self, params, features):
    return self.scorer.apply({"params": params}, features)


class PrunedPrefix(NamedTuple):
  prefix: Prefix     # [K kept visual ; T text], (B, K + T, D)
  kept: jax.Array    # (B, K) int32 kept visual indices, ascending


def pruned_prefix(vlm: VLM, params, images, tokens, input_mask, mask_ar, *,
                  k: int, score_fn: ScoreFn, score_params,
                  policy: str = "original") -> PrunedPrefix:
  """images (B, H, W, 3), text (B, T) -> the LLM prefix over K kept tokens.

  The kept tokens' ORIGINAL encoder features are projected (no gate, no
  Denoiser: those exist only in training). Positions follow `policy`
  (`method.selection.kept_positions`): "original" keeps each token's grid
  position and starts the text at N; "packed" uses 0..K-1 and starts the text
  at K. With k = N and policy "original" this is `decode.full_prefix`.
  """
  if policy not in POSITION_POLICIES:
    raise ValueError(f"position policy must be one of {POSITION_POLICIES}, "
                     f"got {policy!r}")
  features = vlm.encode_image(params, images)                   # (B, N, Dv)
  b, n = features.shape[:2]
  s = score_fn(score_params, features)
  if s.shape != (b, n):
    raise ValueError(f"score function returned shape {s.shape}, expected "
                     f"(B, N) = {(b, n)}")
  idx = select_topk(s.astype(jnp.float32), k)                   # (B, K)
  visual = vlm.project(params, gather_tokens(features, idx))    # (B, K, D)
  positions = kept_positions(idx, n, 0, policy)                 # (B, K)
  text_start = jnp.full((b,), n if policy == "original" else k, jnp.int32)
  prefix = build_prefix(vlm, params, visual, positions, tokens, input_mask,
                        mask_ar, text_start=text_start)
  return PrunedPrefix(prefix, idx)


jit_pruned_prefix = jax.jit(
    pruned_prefix, static_argnames=("vlm", "k", "score_fn", "policy"))


@functools.partial(jax.jit, static_argnums=0)
def jit_full_prefix(vlm: VLM, params, images, tokens, input_mask, mask_ar
                    ) -> PrunedPrefix:
  """The unpruned model's prefix, with kept = all N indices."""
  prefix = full_prefix(vlm, params, images, tokens, input_mask, mask_ar)
  b, n = tokens.shape[0], vlm.num_visual_tokens
  kept = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  return PrunedPrefix(prefix, kept)
