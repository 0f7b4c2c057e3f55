"""Every visual-token pruning method behind one interface.

Generation (`Pipeline`), evaluation (`evaluate run`), the prefill benchmark
(`bench --method`) and the pictures (`visualize`) all select through a
`Pruner`, so accuracy and speed compare like with like: the learned Scorer
and each training-free baseline act on the same encoder output, keep the same
static K tokens, and feed the same `selected_sequence`.

  method      kept tokens                                   needs
  autoselect  top-K of the trained Scorer's logits          Scorer params
  random      K uniformly at random, seeded per example     a seed
  grid        a uniform spatial subsample                   -
  norm        top-K of the encoder output's L2 norm         -
  attention   top-K of the mean attention each token        the encoder's last
              receives in the encoder's last block          block attention
  divprune    greedy max-min cosine diversity               -
  visionzip   dominant tokens by attention + contextual     last block
              tokens merged from the rest                   attention, keys
  fastv       inside the LLM, after decoder layer 2, by     (its own path,
              the last prompt token's attention             `inference.fastv`)
  full        all N tokens                                  -

A `Pruner` is a frozen dataclass (hashable: a static jit argument); its
array state (Scorer params, the random key) is a separate `params` argument,
so a new seed or Scorer does not recompile. `fastv` is `FastV(layer)`: not a
pre-LLM selection, the pipeline routes it to `inference.fastv`.

Axes: B batch, N visual tokens, K kept, Dv vision width.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from autoselect_jax import baselines
from autoselect_jax.method.modules import Scorer
from autoselect_jax.method.selection import gather_tokens, select_topk

__all__ = ["METHODS", "PRE_LLM_METHODS", "Kept", "Pruner", "FastV",
           "LearnedScores", "scores_pruner", "make_pruner"]

PRE_LLM_METHODS = ("autoselect", "random", "grid", "norm", "attention",
                   "divprune", "visionzip")
METHODS = ("full",) + PRE_LLM_METHODS + ("fastv",)


class Kept(NamedTuple):
  """A selection: index (B, K) int32 ascending; features (B, K, Dv), the
  encoder features the LLM receives for them (the original ones, or merged
  ones for VisionZip); scores (B, N) float32 per-token scores where the
  method has them (for pictures), else None."""
  index: jax.Array
  features: jax.Array
  scores: Optional[jax.Array] = None


# A selection function: (params, features (B, N, Dv), k, attention) ->
# (B, K) ascending indices, (indices, scores) or a `Kept`. `attention` is the
# encoder's `LastAttention` (received (B, N), keys (B, N, Dv)) or None.
SelectFn = Callable[[Any, jax.Array, int, Any], Any]


@dataclasses.dataclass(frozen=True)
class Pruner:
  """A pre-LLM selection method.

  name: the method name (reports, run files, picture titles).
  select: a hashable selection function (`SelectFn`).
  needs_attention: encode with `last_attention=True` (the encoder's last
    block's attention statistics), for `attention` and `visionzip`.
  """
  name: str
  select: SelectFn
  needs_attention: bool = False

  def __call__(self, params, features, k: int, attention=None) -> Kept:
    """(B, N, Dv) -> `Kept` of K tokens."""
    if self.needs_attention and attention is None:
      raise ValueError(f"{self.name} needs the encoder's last-block attention"
                       " (encode_image(..., last_attention=True))")
    out = self.select(params, features, k, attention)
    if isinstance(out, Kept):
      return out
    index, scores = out if isinstance(out, tuple) else (out, None)
    return Kept(index, gather_tokens(features, index), scores)

  def encode(self, vlm, params, images):
    """(B, H, W, 3) -> (features (B, N, Dv), attention or None)."""
    if self.needs_attention:
      return vlm.encode_image(params, images, last_attention=True)
    return vlm.encode_image(params, images), None


@dataclasses.dataclass(frozen=True)
class FastV:
  """FastV (Chen et al., ECCV 2024): prunes inside the LLM after decoder
  layer `layer`; see `inference.fastv`."""
  layer: int = 2
  name: str = "fastv"


@dataclasses.dataclass(frozen=True)
class LearnedScores:
  """The trained AutoSelect Scorer as a score function:
  (scorer params, features (B, N, Dv)) -> (B, N) logits."""
  scorer: Scorer

  def __call__(self, params, features):
    return self.scorer.apply({"params": params}, features)


@dataclasses.dataclass(frozen=True)
class _TopKOfScores:
  """Top-K of any score function `score_fn(params, features) -> (B, N)`."""
  score_fn: Callable[[Any, jax.Array], jax.Array]

  def __call__(self, params, features, k, attention):
    b, n = features.shape[:2]
    s = self.score_fn(params, features)
    if s.shape != (b, n):
      raise ValueError(f"score function returned shape {s.shape}, expected "
                       f"(B, N) = {(b, n)}")
    s = s.astype(jnp.float32)
    return select_topk(s, k), s


def scores_pruner(name: str, score_fn) -> Pruner:
  """A Pruner keeping the top-K of `score_fn(params, features) -> (B, N)`
  (hashable, e.g. a frozen dataclass or a module-level function)."""
  return Pruner(name, _TopKOfScores(score_fn))


def _random(key, features, k, attention):
  """Example b draws its K tokens from fold_in(key, b): the same seed and
  batch position give the same tokens whatever else is in the batch."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
      jnp.arange(features.shape[0]))
  scores = jax.vmap(lambda key: jax.random.uniform(key, features.shape[1:2])
                    )(keys)
  return select_topk(scores, k), scores


def _grid(params, features, k, attention):
  return baselines.grid_select(features, k)


def _norm(params, features, k, attention):
  return (baselines.norm_select(features, k),
          jnp.linalg.norm(features.astype(jnp.float32), axis=-1))


def _attention(params, features, k, attention):
  return (baselines.attention_select(features, k,
                                     received=attention.received),
          attention.received.astype(jnp.float32))


def _divprune(params, features, k, attention):
  return baselines.divprune_select(features, k)


@dataclasses.dataclass(frozen=True)
class _VisionZip:
  """VisionZip's keys are compared averaged over the encoder's heads."""
  num_heads: int = 1

  def __call__(self, params, features, k, attention):
    index, kept = baselines.visionzip_select(
        features, k, received=attention.received, keys=attention.keys,
        num_heads=self.num_heads)
    return Kept(index, kept, attention.received.astype(jnp.float32))


_SIMPLE = {
    "random": Pruner("random", _random),
    "grid": Pruner("grid", _grid),
    "norm": Pruner("norm", _norm),
    "attention": Pruner("attention", _attention, needs_attention=True),
    "divprune": Pruner("divprune", _divprune),
}


def make_pruner(method: str, *, scorer: Optional[Scorer] = None,
                scorer_params=None, seed: int = 0, fastv_layer: int = 2,
                vision_heads: int = 1):
  """(pruner, params) for a method name (`METHODS`).

  autoselect needs `scorer` and `scorer_params`; random uses `seed`;
  visionzip compares keys averaged over `vision_heads` (the encoder's head
  count, as VisionZip does); fastv returns (FastV(fastv_layer), None); full
  returns (None, None).
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; choose from "
                     f"{', '.join(METHODS)}")
  if method == "full":
    return None, None
  if method == "fastv":
    return FastV(fastv_layer), None
  if method == "autoselect":
    if scorer is None or scorer_params is None:
      raise ValueError("method 'autoselect' needs a trained Scorer "
                       "(--scorer DIR / scorer_dir=)")
    return scores_pruner("autoselect", LearnedScores(scorer)), scorer_params
  if method == "visionzip":
    return Pruner("visionzip", _VisionZip(vision_heads),
                  needs_attention=True), None
  if method == "random":
    if isinstance(seed, bool) or not isinstance(seed, int):
      raise ValueError(f"seed must be an int, got {seed!r}")
    return _SIMPLE[method], jax.random.key(seed)
  return _SIMPLE[method], None
