"""The deployed prefix: encode, select K tokens, project, sequence.

Selection goes through a `pruners.Pruner` (the learned Scorer or any
training-free baseline), passed to jit as a static argument while its params
(Scorer weights, a random key) are traced. The sequence itself is
`method.selection.selected_sequence`, the same function validation and the
demo's evaluation use.

Axes: B batch, N visual tokens, K kept, T text, Dv vision width, D LLM width.
"""

from __future__ import annotations

from typing import Optional

import jax

from autoselect_jax.inference.decode import prefill
from autoselect_jax.inference.pruners import Kept, Pruner
from autoselect_jax.method.selection import (POSITION_POLICIES,
                                             selected_sequence)
from autoselect_jax.models import VLM, Sequence, grid_index


def select(vlm: VLM, params, images, k: int, pruner: Optional[Pruner] = None,
           pruner_params=None) -> tuple[jax.Array, Kept]:
  """images (B, H, W, 3) -> (encoder features (B, N, Dv), `Kept` of K).

  k = N keeps every token without a pruner (top-N of anything is 0..N-1).
  """
  if k == vlm.num_visual_tokens:
    features = vlm.encode_image(params, images)
    b, n = features.shape[:2]
    return features, Kept(grid_index(b, n), features)
  if pruner is None:
    raise ValueError(f"k={k} < N={vlm.num_visual_tokens} needs a pruner")
  features, attention = pruner.encode(vlm, params, images)
  return features, pruner(pruner_params, features, k, attention)


def pruned_prefix(vlm: VLM, params, images, tokens, input_mask, mask_ar, *,
                  k: int, pruner: Optional[Pruner] = None,
                  pruner_params=None, policy: str = "original"
                  ) -> tuple[Sequence, jax.Array]:
  """images (B, H, W, 3), text (B, T) -> (the LLM's Sequence over K kept
  tokens, kept indices (B, K) int32 ascending).

  Positions follow `policy` (`method.selection.kept_positions`). With k = N
  this is the full model's sequence (no pruner needed).
  """
  if policy not in POSITION_POLICIES:
    raise ValueError(f"position policy must be one of {POSITION_POLICIES}, "
                     f"got {policy!r}")
  features, kept = select(vlm, params, images, k, pruner, pruner_params)
  seq = selected_sequence(vlm, params, features, kept.index, tokens,
                          input_mask, mask_ar, policy,
                          kept_features=kept.features)
  return seq, kept.index


jit_pruned_prefix = jax.jit(
    pruned_prefix, static_argnames=("vlm", "k", "pruner", "policy"))


def prefill_images(vlm: VLM, params, images, tokens, input_mask, mask_ar, *,
                   k: int, new_tokens: int, pruner: Optional[Pruner] = None,
                   pruner_params=None, policy: str = "original"):
  """Image and prompt in, the first token's logits out: time to first token.

  One program: `pruned_prefix` (encode, select K, project, sequence), then
  `decode.prefill` into a cache of L + new_tokens slots (L = K + T). What
  `Pipeline.generate` runs before its decode loop, and what `bench` times
  as TTFT. Returns (prefill's output: logits (B, V), KVCache, cache_mask
  (B, S), last positions (B,); kept indices (B, K)).
  """
  seq, kept = pruned_prefix(vlm, params, images, tokens, input_mask, mask_ar,
                            k=k, pruner=pruner, pruner_params=pruner_params,
                            policy=policy)
  return prefill(vlm, params, seq, seq.input_mask.shape[1] + new_tokens), kept


jit_prefill_images = jax.jit(
    prefill_images,
    static_argnames=("vlm", "k", "new_tokens", "pruner", "policy"))


def full_prefix(vlm: VLM, params, images, tokens, input_mask, mask_ar
                ) -> Sequence:
  """The unpruned model's sequence: all N visual tokens at 0..N-1."""
  return pruned_prefix(vlm, params, images, tokens, input_mask, mask_ar,
                       k=vlm.num_visual_tokens)[0]
