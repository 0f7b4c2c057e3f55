"""A notebook-friendly generation API: full or pruned, greedy or sampled.

  pipe = Pipeline.from_checkpoint("ckpt/", scorer_dir="workdir/scorer")
  pipe.generate(["cat.jpg"], ["caption en"], k=64, max_new_tokens=20)
  -> [{"ids": [...], "text": "...", "kept": [3, 17, ...]}]

Each call: preprocess and tokenize on the host, validate everything, then two
jitted functions: the prefix (`prune.pruned_prefix`: encode; for K < N also
score, static top-K, gather, project; then the LLM's `Sequence`) and
`decode.decode` (KV-cache prefill of K + T tokens into a
cache of K + T + max_new_tokens slots, then one token per step with EOS
stopping per example). Prompts are right-padded to a multiple of `bucket`, so
there is one compile per (batch, K, length bucket, max_new_tokens).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autoselect_jax.checkpoints import store
from autoselect_jax.checkpoints.scorer import check_scorer_params, load_scorer
from autoselect_jax.data.processor import Processor
from autoselect_jax.inference.decode import decode
from autoselect_jax.inference.prune import (LearnedScores, ScoreFn,
                                            jit_pruned_prefix)
from autoselect_jax.method.modules import Scorer
from autoselect_jax.method.selection import POSITION_POLICIES
from autoselect_jax.models import VLM, unstack_layers

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def bucket_length(n: int, bucket: int = 16) -> int:
  """Prompt lengths are padded up to a multiple of `bucket` (one compile each)."""
  return max(bucket, int(math.ceil(n / bucket)) * bucket)


def load_learned_scores(scorer_dir: str, vlm: VLM):
  """(LearnedScores, params, position policy) of an exported Scorer, checked
  against the VLM it will prune."""
  params, cfg = load_scorer(scorer_dir)
  vision = cfg.get("vlm", {}).get("vision", {})
  want = {"width": vlm.visual_width, "image_size": vlm.config.vision.image_size,
          "patch_size": vlm.config.vision.patch_size}
  got = {key: vision.get(key) for key in want}
  if got != want:
    raise ValueError(f"the Scorer in {scorer_dir} was trained for a vision "
                     f"encoder with {got}, this checkpoint has {want}")
  try:
    scorer = Scorer(**cfg["scorer"])
  except TypeError as e:
    raise ValueError(f"bad scorer config in {scorer_dir}: {e}") from None
  dummy = jnp.zeros((1, vlm.num_visual_tokens, vlm.visual_width))
  abstract = jax.eval_shape(scorer.init, jax.random.key(0), dummy)["params"]
  check_scorer_params(params, abstract)
  return LearnedScores(scorer), params, cfg.get("position_policy", "original")


@dataclasses.dataclass
class Pipeline:
  """A frozen VLM, its processor and optionally a score function.

  Attributes:
    score_fn, score_params: scores for top-K (`inference.prune`); without
      them only the full model (k = N) is available.
    policy: position ids of kept tokens, "original" or "packed".
    bucket: prompt-length bucket.
    max_positions: the longest sequence (cache slots and RoPE positions) a
      call may build; Gemma was trained to 8192.
  """
  vlm: VLM
  params: Any
  processor: Processor
  score_fn: Optional[ScoreFn] = None
  score_params: Any = None
  policy: str = "original"
  bucket: int = 16
  max_positions: int = 8192

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, dtype: str = "float32",
                      scorer_dir: Optional[str] = None,
                      policy: Optional[str] = None) -> "Pipeline":
    """A converted VLM checkpoint, plus an exported Scorer if given. The
    position policy defaults to the Scorer's training policy."""
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    config = store.load_config(ckpt_dir)
    # Per-layer weights: a scanned model copies each layer out of its stack
    # on every call (measured by autoselect_jax.bench).
    vlm = VLM(config, DTYPES[dtype], scan_layers=False)
    score_fn = score_params = None
    trained_policy = "original"
    if scorer_dir is not None:
      score_fn, score_params, trained_policy = load_learned_scores(scorer_dir,
                                                                   vlm)
    params = unstack_layers(store.load_params(ckpt_dir, config))
    return cls(vlm, params, Processor.from_checkpoint(ckpt_dir, config),
               score_fn, score_params, policy or trained_policy)

  def _check(self, images, prompts, k, max_new_tokens, temperature,
             top_p) -> int:
    if len(images) != len(prompts):
      raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
      raise ValueError("nothing to generate: no images")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
        or max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be a positive int, got "
                       f"{max_new_tokens!r}")
    n = self.vlm.num_visual_tokens
    if k is None:
      k = n
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
        or not 1 <= k <= n:
      raise ValueError(f"k must be an int in [1, N={n}], got {k!r}")
    if k < n and self.score_fn is None:
      raise ValueError(f"k={k} < N={n} needs a Scorer (--scorer DIR / "
                       "scorer_dir=) or another score function; without one "
                       "only the full model (k = N) runs")
    if self.policy not in POSITION_POLICIES:
      raise ValueError(f"policy must be one of {POSITION_POLICIES}, got "
                       f"{self.policy!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return int(k)

  def generate(self, images: Sequence, prompts: Sequence[str], *,
               max_new_tokens: int = 32, k: Optional[int] = None,
               temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0) -> list[dict]:
    """One answer per (image, prompt) pair: {"ids", "text", "kept"}.

    k: visual tokens kept (default N, the full model; k < N needs a score
    function). temperature 0 is greedy; otherwise nucleus sampling with
    `top_p`, example i seeded by fold_in(key(seed), i). `ids` end at the first
    <eos> (included); `kept` lists the kept visual indices in grid order.
    """
    k = self._check(images, prompts, k, max_new_tokens, temperature, top_p)
    proc, vlm = self.processor, self.vlm
    n = vlm.num_visual_tokens
    pixels = np.stack([proc.image(im) for im in images])
    encoded = [proc.encode(p) for p in prompts]
    longest = max(len(e.tokens) for e in encoded)
    length = bucket_length(longest, self.bucket)
    slots = k + length + max_new_tokens
    last_position = (n if self.policy == "original" or k == n else k) \
        + length + max_new_tokens
    if max(slots, last_position) > self.max_positions:
      raise ValueError(
          f"the longest prompt has {longest} tokens (bucket {length}); with "
          f"k={k} visual tokens and max_new_tokens={max_new_tokens} the "
          f"sequence needs {max(slots, last_position)} positions, over "
          f"max_positions={self.max_positions}")
    text = proc.batch(encoded, length)
    full = k == n  # All N tokens: the full model, no score function.
    seq, kept = jit_pruned_prefix(
        vlm, self.params, pixels, text.tokens, text.input_mask, text.mask_ar,
        k=k, score_fn=None if full else self.score_fn,
        score_params=None if full else self.score_params,
        policy="original" if full else self.policy)
    ids = np.asarray(decode(
        vlm, self.params, seq, max_new_tokens=max_new_tokens,
        eos_id=proc.eos_id, pad_id=proc.pad_id, temperature=temperature,
        top_p=top_p, rng=jax.random.key(seed)))
    results = []
    for row, idx in zip(ids.tolist(), np.asarray(kept).tolist()):
      if proc.eos_id in row:
        row = row[:row.index(proc.eos_id) + 1]
      results.append({"ids": row, "text": proc.decode(row), "kept": idx})
    return results
