"""The project's stages, each its own jitted function, and their timed calls.

A run is one (k, pruned) pair: the full model is (N, False), each budget K
is (K, True). Axes: B batch, N visual tokens, K kept, T text, M decode steps,
Dv vision width.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

from autoselect_jax.benchmarks.timing import timed


class Stages(NamedTuple):
  """The jitted stage functions (see `make_stages`)."""
  encode: Callable
  prune: Callable
  make_prefix: Callable
  prefill: Callable
  decode_steps: Callable
  ttft: Callable


class Prefilled(NamedTuple):
  """One run after its warm-up: the prefix, prefill's output, K + T, and
  XLA's memory plan of its TTFT call and of its prefill (`memory_plan`)."""
  prefix: Any
  prefill_out: tuple
  length: int
  memory: dict


@dataclasses.dataclass(frozen=True)
class StageSetup:
  """What every batch's stages share."""
  vlm: Any            # `models.VLM`, in the bench dtype and layer layout.
  params: Any         # VLM params in that layout.
  method: Any         # `method.AutoSelect` holding the Scorer.
  scorer_params: Any
  stages: Stages
  decode_tokens: int  # M.
  pruner: Any = None  # The Scorer as an `inference.pruners` Pruner (TTFT).
  pruner_params: Any = None


def make_stages() -> Stages:
  """encode: images (B, H, W, 3) -> features (B, N, Dv); prune: Scorer +
  top-K + gather -> ((B, K, Dv), idx (B, K)); make_prefix: project + text;
  prefill: into a cache of `cache_size` slots; decode_steps: `steps` greedy
  steps in one `fori_loop`, returning the last logits; ttft: the deployed
  one-call path from pixels to the first token's logits
  (`prune.jit_prefill_images`, what `Pipeline.generate` runs)."""
  import jax
  import jax.numpy as jnp
  from autoselect_jax.inference import decode
  from autoselect_jax.inference.prune import jit_prefill_images
  from autoselect_jax.method import forward, selection

  @functools.partial(jax.jit, static_argnums=0)
  def encode(vlm, params, images):
    return vlm.encode_image(params, images)

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def prune(method, params, features, k):
    idx = selection.select_topk(forward.scores(method, params, features), k)
    return selection.gather_tokens(features, idx), idx

  @functools.partial(jax.jit, static_argnums=0)
  def make_prefix(vlm, params, visual_features, visual_positions, tokens):
    visual = vlm.project(params, visual_features)
    return vlm.sequence(params, visual, visual_positions,
                        vlm.num_visual_tokens, tokens, *prompt_masks(tokens))

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def prefill(vlm, params, prefix, cache_size):
    return decode.prefill(vlm, params, prefix, cache_size)

  @functools.partial(jax.jit, static_argnums=(0, 6))
  def decode_steps(vlm, params, logits, cache, cache_mask, last_pos, steps,
                   start):
    def body(t, state):
      logits, cache, cache_mask = state
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return decode.extend(vlm, params, token, last_pos + 1 + t, cache,
                           cache_mask, start + t)
    return jax.lax.fori_loop(0, steps, body, (logits, cache, cache_mask))[0]

  return Stages(encode, prune, make_prefix, prefill, decode_steps,
                jit_prefill_images)


def _ttft_call(setup: StageSetup, k: int, pruned: bool):
  """The TTFT call of one run: fn(vlm, params, images, tokens, input_mask,
  mask_ar), the prompt all real and all in the bidirectional prefix."""
  return functools.partial(
      setup.stages.ttft, k=k, new_tokens=setup.decode_tokens,
      pruner=setup.pruner if pruned else None,
      pruner_params=setup.pruner_params if pruned else None)


def prompt_masks(tokens):
  """(input_mask, mask_ar) of a benchmark prompt (B, T): every token real
  and in the bidirectional prefix."""
  import jax.numpy as jnp
  return jnp.ones(tokens.shape, bool), jnp.zeros(tokens.shape, jnp.int32)


def memory_plan(jitted, *args, **kwargs) -> dict:
  """XLA's buffer plan of one compiled call, in bytes: arguments, outputs,
  temporaries and their total (arguments + outputs + temporaries - aliased),
  the device memory the call needs while it runs."""
  m = jitted.lower(*args, **kwargs).compile().memory_analysis()
  plan = {"argument_bytes": m.argument_size_in_bytes,
          "output_bytes": m.output_size_in_bytes,
          "temp_bytes": m.temp_size_in_bytes}
  plan["total_bytes"] = (sum(plan.values()) - m.alias_size_in_bytes)
  return plan


def batch_inputs(config, batch: int, n_text: int, seed: int):
  """Random images (B, S, S, 3) float32 in [-1, 1] and prompt tokens (B, T)
  int32 (<bos> first, then ids below the image token), seeded by the batch."""
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng([seed, batch])
  s = config.vision.image_size
  images = jnp.asarray(rng.uniform(-1, 1, (batch, s, s, 3)), jnp.float32)
  hi = min(config.image_token_id, config.llm.vocab_size)
  tokens = rng.integers(3, hi, (batch, n_text), dtype=np.int32)
  tokens[:, 0] = config.bos_token_id
  return images, jnp.asarray(tokens)


def warm_up(setup: StageSetup, images, tokens, runs, log):
  """Compiles and runs every stage once per run.

  Returns (features (B, N, Dv), {(k, pruned): Prefilled}).
  """
  import jax.numpy as jnp
  st, vlm, params, m = (setup.stages, setup.vlm, setup.params,
                        setup.decode_tokens)
  b, t, n = tokens.shape[0], tokens.shape[1], vlm.num_visual_tokens
  log("compiling encode")
  features = timed(st.encode, vlm, params, images)[1]
  state = {}
  for k, pruned in runs:
    log(f"compiling k={k}{'' if pruned else ' (full)'}")
    if pruned:
      kept, idx = timed(st.prune, setup.method, setup.scorer_params,
                        features, k)[1]
    else:
      kept, idx = features, jnp.broadcast_to(
          jnp.arange(n, dtype=jnp.int32), (b, n))
    prefix = st.make_prefix(vlm, params, kept, idx, tokens)
    length = k + t
    pre = timed(st.prefill, vlm, params, prefix, length + m)[1]
    timed(st.decode_steps, vlm, params, *pre, m, length)
    ttft = _ttft_call(setup, k, pruned)
    ttft_args = (vlm, params, images, tokens, *prompt_masks(tokens))
    timed(ttft, *ttft_args)
    memory = {"ttft": memory_plan(ttft.func, *ttft_args, **ttft.keywords),
              "prefill": memory_plan(st.prefill, vlm, params, prefix,
                                     length + m)}
    state[(k, pruned)] = Prefilled(prefix, pre, length, memory)
  return features, state


def timed_calls(setup: StageSetup, images, tokens, features, state,
                runs) -> list:
  """(key, fn, args) of one round: encode, then per run the pruner (pruned
  runs only), the prefill, the decode steps and the one-call TTFT. Keys:
  "encode", ("pruner", k), ("prefill", k, pruned), ("decode", k, pruned),
  ("ttft", k, pruned)."""
  st, vlm, params, m = (setup.stages, setup.vlm, setup.params,
                        setup.decode_tokens)
  calls = [("encode", st.encode, (vlm, params, images))]
  for k, pruned in runs:
    run = state[(k, pruned)]
    if pruned:
      calls.append((("pruner", k), st.prune,
                    (setup.method, setup.scorer_params, features, k)))
    calls.append((("prefill", k, pruned), st.prefill,
                  (vlm, params, run.prefix, run.length + m)))
    calls.append((("decode", k, pruned), st.decode_steps,
                  (vlm, params, *run.prefill_out, m, run.length)))
    calls.append((("ttft", k, pruned), _ttft_call(setup, k, pruned),
                  (vlm, params, images, tokens, *prompt_masks(tokens))))
  return calls
