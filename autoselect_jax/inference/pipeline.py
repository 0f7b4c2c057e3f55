"""A notebook-friendly generation API: full or pruned, greedy or sampled.

  pipe = Pipeline.from_checkpoint("ckpt/", scorer_dir="workdir/scorer")
  pipe.generate(["cat.jpg"], ["caption en"], k=64, max_new_tokens=20)
  -> [{"ids": [...], "text": "...", "kept": [3, 17, ...]}]

Each call: preprocess and tokenize on the host, validate everything, then two
jitted functions. `prune.prefill_images` runs from pixels to the first
token's logits: encode; for K < N the pruner's selection of K tokens
(`inference.pruners`: the learned Scorer or a training-free baseline);
project; the LLM's `Sequence`; the KV-cache prefill of K + T tokens into a
cache of K + T + max_new_tokens slots. It is the time to first token, and
`bench` times this same call. `decode.decode_prefilled` then generates one
token per step with EOS stopping per example. FastV prunes inside the LLM
instead: the full prefix, then `fastv.fastv_decode`. Prompts are
right-padded to a multiple of `bucket`, so there is one compile per (batch,
K, length bucket, max_new_tokens).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autoselect_jax.checkpoints import store
from autoselect_jax.checkpoints.scorer import check_scorer_params, load_scorer
from autoselect_jax.data.processor import Processor
from autoselect_jax.inference.decode import decode_prefilled
from autoselect_jax.inference.fastv import fastv_decode
from autoselect_jax.inference.prune import (jit_prefill_images,
                                           jit_pruned_prefix, select)
from autoselect_jax.inference.pruners import (FastV, LearnedScores, Pruner,
                                              make_pruner)
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


@functools.partial(jax.jit, static_argnames=("vlm", "k", "pruner"))
def _jit_select(vlm, params, pixels, k, pruner, pruner_params):
  _, kept = select(vlm, params, pixels, k, pruner, pruner_params)
  return kept.index, kept.scores


def method_pruner(vlm: VLM, method: str, *, scorer_dir: Optional[str] = None,
                  seed: int = 0, fastv_layer: int = 2):
  """(pruner, pruner params, the Scorer's position policy or "original") for
  a method name (`pruners.METHODS`); autoselect reads its Scorer from
  `scorer_dir`, checked against `vlm`."""
  scorer = scorer_params = None
  trained = "original"
  if method == "autoselect" and scorer_dir is not None:
    learned, scorer_params, trained = load_learned_scores(scorer_dir, vlm)
    scorer = learned.scorer
  elif scorer_dir is not None:
    raise ValueError(f"a Scorer is only used by method 'autoselect', not "
                     f"{method!r}")
  depth = vlm.config.llm.depth
  if method == "fastv" and (isinstance(fastv_layer, bool) or not isinstance(
      fastv_layer, int) or not 1 <= fastv_layer < depth):
    raise ValueError(f"fastv_layer must be an int in [1, {depth}) (the "
                     f"decoder has {depth} layers), got {fastv_layer!r}")
  pruner, pruner_params = make_pruner(
      method, scorer=scorer, scorer_params=scorer_params, seed=seed,
      fastv_layer=fastv_layer, vision_heads=vlm.config.vision.num_heads)
  return pruner, pruner_params, trained


@dataclasses.dataclass
class Pipeline:
  """A frozen VLM, its processor and optionally a score function.

  Attributes:
    pruner, pruner_params: the selection for k < N (`inference.pruners`:
      `make_pruner(name, ...)`, or `scores_pruner(name, score_fn)` for any
      score function), or `FastV(layer)`; without one only the full model
      (k = N) is available.
    policy: position ids of kept tokens, "original" or "packed".
    bucket: prompt-length bucket.
    max_positions: the longest sequence (cache slots and RoPE positions) a
      call may build; Gemma was trained to 8192.
    mesh: a 1-D device mesh with axis "data": the batch is split over it and
      the params are replicated (`data_parallel`); None runs on the default
      device. A batch is padded (repeating its last example) to a multiple
      of the mesh size and cut back after decoding.
  """
  vlm: VLM
  params: Any
  processor: Processor
  pruner: Union[Pruner, FastV, None] = None
  pruner_params: Any = None
  policy: str = "original"
  bucket: int = 16
  max_positions: int = 8192
  mesh: Optional[Mesh] = None

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, dtype: str = "float32",
                      scorer_dir: Optional[str] = None,
                      policy: Optional[str] = None,
                      method: Optional[str] = None, seed: int = 0,
                      fastv_layer: int = 2,
                      devices: Optional[Sequence] = None) -> "Pipeline":
    """A converted VLM checkpoint and a pruning method (`pruners.METHODS`;
    default "autoselect" with `scorer_dir`, else "full"). The position policy
    defaults to the Scorer's training policy. The batch is split over
    `devices` (default: every local device; `data_parallel`)."""
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    config = store.load_config(ckpt_dir)
    # Per-layer weights: a scanned model copies each layer out of its stack
    # on every call (measured by autoselect_jax.bench).
    vlm = VLM(config, DTYPES[dtype], scan_layers=False)
    pruner, pruner_params, trained = method_pruner(
        vlm, method or ("autoselect" if scorer_dir else "full"),
        scorer_dir=scorer_dir, seed=seed, fastv_layer=fastv_layer)
    params = unstack_layers(store.load_params(ckpt_dir, config))
    pipe = cls(vlm, params, Processor.from_checkpoint(ckpt_dir, config),
               pruner, pruner_params, policy or trained)
    return pipe.data_parallel(devices)

  def with_method(self, method: str, *, scorer_dir: Optional[str] = None,
                  seed: int = 0, fastv_layer: int = 2,
                  policy: Optional[str] = None) -> "Pipeline":
    """The same model and devices with another pruning method (no reload)."""
    pruner, pruner_params, trained = method_pruner(
        self.vlm, method, scorer_dir=scorer_dir, seed=seed,
        fastv_layer=fastv_layer)
    pipe = dataclasses.replace(self, pruner=pruner,
                               pruner_params=pruner_params,
                               policy=policy or trained)
    return pipe.data_parallel(list(self.mesh.devices.flat)) \
        if self.mesh is not None else pipe

  def data_parallel(self, devices: Optional[Sequence] = None) -> "Pipeline":
    """This pipeline with its batch split over `devices` (default: every
    local device) and its params and pruner params replicated on them."""
    devices = list(devices if devices is not None else jax.local_devices())
    if not devices:
      raise ValueError("data_parallel: no devices")
    mesh = Mesh(np.array(devices), ("data",))
    rep = NamedSharding(mesh, P())
    put = lambda tree: jax.device_put(tree, rep)
    return dataclasses.replace(self, params=put(self.params),
                               pruner_params=put(self.pruner_params),
                               mesh=mesh)

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
    if k < n and self.pruner is None:
      raise ValueError(f"k={k} < N={n} needs a Scorer (--scorer DIR / "
                       "scorer_dir=) or another pruning method; without one "
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

    k: visual tokens kept (default N, the full model; k < N needs a
    pruner). temperature 0 is greedy; otherwise nucleus sampling with
    `top_p`, example i seeded by fold_in(key(seed), i). `ids` end at the first
    <eos> (included); `kept` lists the kept visual indices in grid order.
    """
    k = self._check(images, prompts, k, max_new_tokens, temperature, top_p)
    proc, vlm = self.processor, self.vlm
    n = vlm.num_visual_tokens
    size = len(images)
    if self.mesh is not None and size % self.mesh.size:
      pad = self.mesh.size - size % self.mesh.size
      images = list(images) + [images[-1]] * pad
      prompts = list(prompts) + [prompts[-1]] * pad
    pixels = np.stack([proc.image(im) for im in images])
    encoded = [proc.encode(p) for p in prompts]
    longest = max(len(e.tokens) for e in encoded)
    length = bucket_length(longest, self.bucket)
    fastv = isinstance(self.pruner, FastV)  # Its first layers cache all N.
    slots = (n if fastv else k) + length + max_new_tokens
    packed = self.policy == "packed" and k < n and not fastv
    last_position = (k if packed else n) + length + max_new_tokens
    if max(slots, last_position) > self.max_positions:
      raise ValueError(
          f"the longest prompt has {longest} tokens (bucket {length}); with "
          f"k={k} visual tokens and max_new_tokens={max_new_tokens} the "
          f"sequence needs {max(slots, last_position)} positions, over "
          f"max_positions={self.max_positions}")
    text = proc.batch(encoded, length)
    inputs = (pixels, text.tokens, text.input_mask, text.mask_ar)
    if self.mesh is not None:
      inputs = jax.device_put(inputs, NamedSharding(self.mesh, P("data")))
    sampling = dict(max_new_tokens=max_new_tokens, eos_id=proc.eos_id,
                    pad_id=proc.pad_id, temperature=temperature, top_p=top_p,
                    rng=jax.random.key(seed))
    if fastv and k < n:  # The full prefix; FastV prunes inside the LLM.
      seq, _ = jit_pruned_prefix(vlm, self.params, *inputs, k=n)
      ids, kept = fastv_decode(vlm, self.params, seq, k=k,
                               layer=self.pruner.layer, **sampling)
    else:  # Time to first token is this one call (`bench` times it).
      before_llm = k < n and not fastv
      prefilled, kept = jit_prefill_images(
          vlm, self.params, *inputs, k=k, new_tokens=max_new_tokens,
          pruner=self.pruner if before_llm else None,
          pruner_params=self.pruner_params if before_llm else None,
          policy=self.policy if before_llm else "original")
      ids = decode_prefilled(vlm, self.params, prefilled, **sampling)
    ids, kept = np.asarray(ids)[:size], np.asarray(kept)[:size]
    results = []
    for row, idx in zip(ids.tolist(), kept.tolist()):
      if proc.eos_id in row:
        row = row[:row.index(proc.eos_id) + 1]
      results.append({"ids": row, "text": proc.decode(row), "kept": idx})
    return results

  def select(self, images: Sequence, k: int) -> list[dict]:
    """Each image's selection without generating: {"kept": K ascending
    indices, "scores": N per-token scores, or None for a method without
    scores (grid, divprune)}; what the pictures draw. FastV selects inside
    the LLM from a prompt: its `kept` comes from `generate`."""
    if isinstance(self.pruner, FastV):
      raise ValueError("FastV selects inside the LLM from the prompt; use "
                       "generate(...)['kept']")
    k = self._check(images, ["" for _ in images], k, 1, 0.0, 1.0)
    pixels = np.stack([self.processor.image(im) for im in images])
    if self.mesh is not None:
      pad = -len(pixels) % self.mesh.size
      pixels = jax.device_put(
          np.concatenate([pixels, np.repeat(pixels[-1:], pad, 0)]),
          NamedSharding(self.mesh, P("data")))
    index, scores = _jit_select(self.vlm, self.params, pixels, k,
                                self.pruner if k < self.vlm.num_visual_tokens
                                else None, self.pruner_params)
    index = np.asarray(index)[:len(images)]
    scores = None if scores is None else np.asarray(scores)[:len(images)]
    return [{"kept": index[i].tolist(),
             "scores": None if scores is None else scores[i].tolist()}
            for i in range(len(images))]
