"""Caption exact match of a frozen VLM when only K visual tokens reach the LLM.

A selection function picks the tokens:

  select_fn(features (B, N, Dv), rng, k, ctx) -> indices (B, k) int32, sorted
  ascending, distinct.

`ctx` is a dict of arrays passed into the jitted evaluation: the per-example
"object_mask" (B, N) bool (the oracle's knowledge), "attention" (the
encoder's `LastAttention`, for the attention baseline) plus whatever
`context` the caller hands `evaluate` (e.g. a learned Scorer's parameters),
so selection functions stay static and nothing is baked into the compiled
program. The training-free baselines are the deployed ones
(`inference.pruners`), wrapped by `pruner_selection`.
AutoSelect plugs in as `scores_selection(lambda f, ctx: scorer(ctx[...], f))`.

Kept tokens keep their index in the full grid as position (docs/method.md's
`original` policy) and text positions start at N, as in the full model.
Metric: teacher-forced exact match: an example scores 1 iff the argmax at
every suffix position equals the target token (caption and <eos>).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autoselect_jax.demo import synthetic
from autoselect_jax.data.processor import Processor
from autoselect_jax.demo import data as demo_data
from autoselect_jax.inference import pruners
from autoselect_jax.progress import Progress
from autoselect_jax.method.selection import select_topk, selected_sequence
from autoselect_jax.models import VLM, grid_index

SelectFn = Callable[[jax.Array, jax.Array, int, Mapping[str, Any]], jax.Array]


# --- selection functions ------------------------------------------------------
def full_selection(features, rng, k, ctx):
  """Every token (k must equal N)."""
  del rng, ctx
  b, n = features.shape[:2]
  if k != n:
    raise ValueError(f"full_selection keeps all N={n} tokens, got k={k}")
  return grid_index(b, n)


def random_selection(features, rng, k, ctx):
  """k tokens uniformly at random, independently per example."""
  del ctx
  return select_topk(jax.random.uniform(rng, features.shape[:2]), k)


def oracle_selection(features, rng, k, ctx):
  """The object tokens (a random subset if k is smaller), then random fill."""
  mask = ctx["object_mask"]
  if mask.shape != features.shape[:2]:
    raise ValueError(f"object_mask {mask.shape} does not match features "
                     f"{features.shape[:2]}")
  noise = jax.random.uniform(rng, mask.shape)
  return select_topk(mask.astype(jnp.float32) * 2.0 + noise, k)


@functools.lru_cache(maxsize=None)
def pruner_selection(name: str) -> SelectFn:
  """A parameter-free training-free baseline of `inference.pruners` (grid,
  norm, attention, divprune) as a selection function; cached, so the same
  name is the same jit cache key."""
  pruner, params = pruners.make_pruner(name)
  if params is not None:
    raise ValueError(f"{name} has parameters; not a pruner_selection")

  def select(features, rng, k, ctx):
    del rng
    return pruner(None, features, k, ctx.get("attention")).index
  return select


def scores_selection(score_fn: Callable[[jax.Array, Mapping[str, Any]],
                                        jax.Array]) -> SelectFn:
  """Top-k of score_fn(features, ctx) (B, N): e.g. a learned Scorer.

  Build it once and reuse the returned function: it is the jit cache key.
  """
  def select(features, rng, k, ctx):
    del rng
    return select_topk(score_fn(features, ctx), k)
  return select


# --- evaluation ---------------------------------------------------------------
def selection_logits(vlm: VLM, params, features, idx, tokens, input_mask,
                     mask_ar, policy: str = "original"):
  """(B, T, V) logits predicting each text token when only the tokens `idx`
  (B, K) of `features` (B, N, Dv) reach the LLM (teacher forcing)."""
  seq = selected_sequence(vlm, params, features, idx, tokens, input_mask,
                          mask_ar, policy)
  hidden, _ = vlm.run_llm(params, seq.embeddings, seq.positions,
                          seq.attention_mask())
  return vlm.logits(params, seq.text_predictors(hidden, tokens.shape[1]))


# Three programs, so that a table of M methods at J budgets compiles the
# encoder once, M x J small selection programs and J LLM passes (instead of
# M x J whole models: compiling was most of the demo's evaluation time).
@functools.partial(jax.jit, static_argnames=("vlm",))
def _encode(vlm: VLM, params, images):
  return vlm.encode_image(params, demo_data.scale_images(images),
                          last_attention=True)


@functools.partial(jax.jit, static_argnames=("select_fn", "k"))
def _select(features, attention, rng, ctx, *, select_fn, k):
  return select_fn(features, rng, k, {**ctx, "attention": attention})


@functools.partial(jax.jit, static_argnames=("vlm", "policy"))
def _match(vlm: VLM, params, features, idx, batch, policy="original"):
  """bool (B,): every target token is the argmax given the true history."""
  logits = selection_logits(vlm, params, features, idx, batch["tokens"],
                            batch["input_mask"], batch["mask_ar"], policy)
  ok = (jnp.argmax(logits, axis=-1) == batch["tokens"]) | ~batch["loss_mask"]
  return jnp.all(ok, axis=1)


def _check_indices(idx: np.ndarray, b: int, k: int, n: int) -> None:
  if idx.shape != (b, k):
    raise ValueError(f"selection returned shape {idx.shape}, want {(b, k)}")
  if idx.min() < 0 or idx.max() >= n:
    raise ValueError(f"selection returned indices outside [0, {n})")
  if k > 1 and not (np.diff(idx, axis=1) > 0).all():
    raise ValueError("selection must return distinct indices sorted ascending")


def exact_match(vlm: VLM, params, arrays: Mapping[str, np.ndarray],
                select_fn: SelectFn, k: int | None = None, *,
                batch_size: int = 250, seed: int = 0,
                context: Mapping[str, Any] | None = None,
                policy: str = "original") -> np.ndarray:
  """bool (num_examples,) exact match over `encode_examples` arrays.

  policy: the kept tokens' positions (`original` or `packed`, docs/method.md).
  """
  n = vlm.num_visual_tokens
  k = n if k is None else int(k)
  if not 0 < k <= n:
    raise ValueError(f"k={k} must be in [1, {n}]")
  total = len(arrays["tokens"])
  keys = ("images", "tokens", "input_mask", "mask_ar", "loss_mask")
  rng = jax.random.key(seed)
  out = []
  for i, start in enumerate(range(0, total, batch_size)):
    stop = min(start + batch_size, total)
    # Pad the last batch to a full one (repeating example 0): one program.
    take = np.concatenate([np.arange(start, stop),
                           np.zeros(batch_size - (stop - start), int)])
    batch = {key: arrays[key][take] for key in keys}
    ctx = {"object_mask": arrays["object_mask"][take], **(context or {})}
    features, attention = _encode(vlm, params, batch["images"])
    idx = _select(features, attention, jax.random.fold_in(rng, i), ctx,
                  select_fn=select_fn, k=k)
    match = _match(vlm, params, features, idx, batch, policy)
    if i == 0:
      _check_indices(np.asarray(idx), batch_size, k, n)
    out.append(np.asarray(match)[:stop - start])
  return np.concatenate(out)


def evaluate(vlm: VLM, params, processor: Processor,
             examples: Sequence[synthetic.Example], select_fn: SelectFn,
             k: int | None = None, *, batch_size: int = 250, seed: int = 0,
             context: Mapping[str, Any] | None = None,
             prompt: str = demo_data.PROMPT) -> float:
  """Caption exact match in [0, 1] with k tokens (default N) per image."""
  arrays = demo_data.encode_examples(examples, processor, prompt=prompt)
  return float(exact_match(vlm, params, arrays, select_fn, k,
                           batch_size=batch_size, seed=seed,
                           context=context).mean())


BASELINES: dict[str, SelectFn] = {
    "oracle": oracle_selection, "random": random_selection,
    **{name: pruner_selection(name)
       for name in ("grid", "norm", "attention", "divprune")}}


def selection_table(vlm: VLM, params, processor: Processor,
                    examples: Sequence[synthetic.Example], ks: Sequence[int],
                    methods: Mapping[str, SelectFn | tuple] | None = None, *,
                    batch_size: int = 250, seed: int = 0, progress=None,
                    policy: str = "original"
                    ) -> dict[str, dict[int, float]]:
  """{"full": {k: acc}, method: {k: acc}} for every k in ks.

  methods: name -> select_fn or (select_fn, context); default BASELINES.
  The full model (all N tokens) is evaluated once and repeated per k.
  progress: the progress bar's stream (default stderr). policy: the kept
  tokens' positions (the full model's are the grid's either way).
  """
  arrays = demo_data.encode_examples(examples, processor)
  methods = BASELINES if methods is None else methods
  bar = Progress(1 + len(methods) * len(ks), "evaluate", unit="run",
                 stream=progress)

  def run(fn, k, ctx=None):
    out = float(exact_match(vlm, params, arrays, fn, k,
                            batch_size=batch_size, seed=seed,
                            context=ctx, policy=policy).mean())
    bar.update()
    return out

  full = float(exact_match(vlm, params, arrays, full_selection, None,
                           batch_size=batch_size, seed=seed).mean())
  bar.update()
  table = {"full": {k: full for k in ks}}
  for name, method in methods.items():
    fn, ctx = method if isinstance(method, tuple) else (method, None)
    table[name] = {k: run(fn, k, ctx) for k in ks}
  bar.close()
  return table


def format_table(table: Mapping[str, Mapping[int, float]], n: int) -> str:
  """Markdown table: one row per method, one column per k."""
  ks = list(next(iter(table.values())))
  lines = ["| method | " + " | ".join(f"K={k}" for k in ks) + " |",
           "|---|" + "---|" * len(ks)]
  for name, row in table.items():
    label = f"{name} ({n} tokens)" if name == "full" else name
    lines.append(f"| {label} | " + " | ".join(f"{row[k]:.3f}" for k in ks)
                 + " |")
  return "\n".join(lines)
