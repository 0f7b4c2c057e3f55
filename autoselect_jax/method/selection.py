"""Hard top-K selection for inference: indices, gather, positions, sequence.

Axes: B batch, N visual tokens, K kept tokens, T text tokens, D width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from autoselect_jax.method.lapsum import _check_k
from autoselect_jax.models.sequence import Sequence

__all__ = ["POSITION_POLICIES", "select_topk", "gather_tokens",
           "kept_positions", "selected_sequence"]

POSITION_POLICIES = ("original", "packed")


def select_topk(scores, k: int):
  """Indices of the k highest scores, in ascending (original) order.

  Args:
    scores: (B, N) float.
    k: Python int in [1, N].

  Returns:
    (B, K) int32, k distinct indices per row, sorted ascending. Among equal
    scores the lower index wins.
  """
  if scores.ndim != 2:
    raise ValueError(f"scores must be (B, N), got shape {scores.shape}")
  k = _check_k(k, scores.shape[1])
  _, idx = jax.lax.top_k(scores, k)                 # (B, K), by score
  return jnp.sort(idx, axis=-1).astype(jnp.int32)


def gather_tokens(x, idx):
  """(B, N, D), (B, K) int -> (B, K, D): x[b, idx[b, j]]."""
  if x.ndim != 3:
    raise ValueError(f"x must be (B, N, D), got shape {x.shape}")
  if idx.ndim != 2 or idx.shape[0] != x.shape[0]:
    raise ValueError(f"idx must be (B, K) with B = {x.shape[0]}, got shape "
                     f"{idx.shape}")
  return jnp.take_along_axis(x, idx[..., None], axis=1)


def kept_positions(idx, n_visual: int, policy: str = "original"):
  """Where the kept tokens sit: (visual_index (B, K) int32, span).

  Args:
    idx: (B, K) int, the kept indices sorted ascending (`select_topk`).
    n_visual: N, the size of the full visual grid.
    policy: "original": kept token j sits at idx[j], its place in the full
      grid, and the visual block spans N positions (the text starts at N, as
      in the full model); "packed": kept tokens at 0..K-1, span K.

  Returns:
    (visual_index, span) for `VLM.sequence`.
  """
  if policy not in POSITION_POLICIES:
    raise ValueError(f"position policy must be one of {POSITION_POLICIES}, "
                     f"got {policy!r}")
  if idx.ndim != 2:
    raise ValueError(f"idx must be (B, K), got shape {idx.shape}")
  b, k = idx.shape
  if not 1 <= k <= n_visual:
    raise ValueError(f"need 1 <= K <= N = {n_visual}, got K = {k}")
  if policy == "original":
    return idx.astype(jnp.int32), n_visual
  return jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k)), k


def selected_sequence(vlm, params, features, idx, tokens, input_mask,
                      mask_ar, policy: str = "original", *,
                      kept_features=None) -> Sequence:
  """The pruned model's LLM input: [K kept visual ; T text].

  The one assembly of a selection that validation (`forward.
  inference_logits`), the deployed prefill (`inference.prune`) and the
  demo's evaluation share. The kept tokens' ORIGINAL encoder features are
  projected (no gate, no Denoiser: those exist only in training).
  idx = 0..N-1 with either policy is the full model's sequence.

  Args:
    vlm: the backbone (`models.VLM` interface).
    params: its parameters.
    features: (B, N, Dv) encoder output.
    idx: (B, K) int kept indices, ascending.
    tokens, input_mask, mask_ar: (B, T) text.
    policy: "original" or "packed" (`kept_positions`).
    kept_features: (B, K, Dv) what the LLM receives for the kept tokens, for
      a pruner that merges tokens (VisionZip); default features[idx].
  """
  index, span = kept_positions(idx, features.shape[1], policy)
  if kept_features is None:
    kept_features = gather_tokens(features, idx)
  elif kept_features.shape != idx.shape + features.shape[2:]:
    raise ValueError(f"kept_features must be (B, K, Dv) = "
                     f"{idx.shape + features.shape[2:]}, got "
                     f"{kept_features.shape}")
  visual = vlm.project(params, kept_features)                   # (B, K, D)
  return vlm.sequence(params, visual, index, span, tokens, input_mask,
                      mask_ar)
