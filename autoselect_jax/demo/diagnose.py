"""Why a frozen demo VLM loses captions when visual tokens are dropped.

  python -m autoselect_jax.demo.diagnose --checkpoint WORKDIR/frozen_vlm

prints, on held-out images with teacher forcing:
1. per-token accuracy by caption word type (colour, shape, position word,
   "and", end of caption) with all tokens, with the oracle's tokens (the
   objects, then random fill) at several K, and with background tokens only
   (every object token dropped);
2. where each decoder layer's attention goes (object tokens, background
   tokens, text) from the rows that predict each word type, with all tokens.

A VLM that finds objects through the background (the encoder copies "an
object is here" into its quadrant's background tokens) reads its position
words and "and" from the background and fails once it is pruned
(docs/demo_task.md).

Axes: B batch, N visual tokens, T text tokens, H heads, S sequence.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autoselect_jax.demo import data as demo_data
from autoselect_jax.demo import evaluate as demo_eval
from autoselect_jax.demo import pretrain, synthetic
from autoselect_jax.method.selection import select_topk
from autoselect_jax.models import grid_index, unstack_layers

WORD_TYPES = ("colour", "shape", "position", "and", "end")
_POSITION = ("top", "bottom", "left", "right")


def word_types(tokens: np.ndarray, processor) -> np.ndarray:
  """(B, T) token ids -> (B, T) word type names ("" for other tokens)."""
  names = {}
  for i in np.unique(tokens):
    w = processor.decode([int(i)]).strip()
    names[int(i)] = ("colour" if w in synthetic.COLOURS else
                     "shape" if w in synthetic.SHAPES else
                     "position" if w in _POSITION else
                     "and" if w == "and" else
                     "end" if int(i) == processor.eos_id else "")
  return np.vectorize(names.get)(tokens)


def background_selection(features, rng, k, ctx):
  """Background tokens only (random among them): no object token kept while
  k <= N - #objects."""
  mask = ctx["object_mask"].astype(jnp.float32)
  return select_topk((1.0 - mask) * 2.0 + jax.random.uniform(rng, mask.shape),
                     k)


def token_accuracy(vlm, params, arrays, select_fn, k: int, types,
                   seed: int = 0) -> dict:
  """{word type: accuracy} and "exact_match" with `select_fn`'s k tokens."""
  # Params are arguments, never closed-over constants: XLA CPU (jax 0.10.2)
  # gave NaNs at random on a VLM whose encoder attention output kernel was
  # exactly zero when the weights were baked into the program as constants.
  idx_fn = jax.jit(lambda p, images, ctx, rng: select_fn(
      vlm.encode_image(p, demo_data.scale_images(images)), rng, k, ctx))
  logits_fn = jax.jit(lambda p, images, idx, tokens, im, ma:
                      demo_eval.selection_logits(
                          vlm, p, vlm.encode_image(
                              p, demo_data.scale_images(images)),
                          idx, tokens, im, ma))
  idx = idx_fn(params, arrays["images"],
               {"object_mask": arrays["object_mask"]}, jax.random.key(seed))
  pred = jnp.argmax(logits_fn(params, arrays["images"], idx, arrays["tokens"],
                              arrays["input_mask"], arrays["mask_ar"]), -1)
  ok = np.asarray(pred == arrays["tokens"])
  real = arrays["loss_mask"].astype(bool)
  out = {t: float(ok[real & (types == t)].mean()) for t in WORD_TYPES
         if (real & (types == t)).any()}
  out["exact_match"] = float(np.all(ok | ~real, axis=1).mean())
  return out


def attention_shares(vlm, params, arrays, types) -> list[dict]:
  """Per decoder layer: {word type: (object, background, text) attention
  mass} from the rows predicting that word type, all tokens kept, averaged
  over heads and examples."""
  vlm = dataclasses.replace(vlm, scan_layers=False)
  params = unstack_layers(params)
  features = vlm.encode_image(params, demo_data.scale_images(arrays["images"]))
  b, n = features.shape[:2]
  seq = vlm.sequence(params, vlm.project(params, features), grid_index(b, n),
                     n, arrays["tokens"], arrays["input_mask"],
                     arrays["mask_ar"])
  mask = np.asarray(arrays["object_mask"], bool)
  real = arrays["loss_mask"].astype(bool)

  probs_of = jax.jit(  # (B, H, S) of decoder `layer` for query rows (B,).
      lambda p, x, pos, m, rows, layer: vlm.run_llm(
          p, x, pos, m, attention_of=(layer, rows))[2], static_argnums=5)
  args = (params, seq.embeddings, seq.positions, seq.attention_mask())

  out = []
  for layer in range(vlm.config.llm.depth):
    sums = {t: np.zeros(3) for t in WORD_TYPES}
    counts = {t: 0 for t in WORD_TYPES}
    for j in range(arrays["tokens"].shape[1]):
      rows = jnp.full((b,), n + j - 1)  # The row that predicts token j.
      p = np.asarray(probs_of(*args, rows, layer)).mean(1)          # (B, S)
      obj = (p[:, :n] * mask).sum(1)
      bg = (p[:, :n] * ~mask).sum(1)
      txt = p[:, n:].sum(1)
      for t in WORD_TYPES:
        sel = real[:, j] & (types[:, j] == t)
        sums[t] += np.stack([obj, bg, txt], 1)[sel].sum(0)
        counts[t] += int(sel.sum())
    out.append({t: tuple(sums[t] / counts[t]) for t in WORD_TYPES
                if counts[t]})
  return out


def diagnose(ckpt: str, *, num_eval: int = 500, ks: Sequence[int] = (4, 8, 16),
             data_seed: int = 0, attention_examples: int = 200) -> dict:
  vlm, params, processor = pretrain.load_frozen(ckpt)
  arrays = demo_data.encode_examples(
      demo_data.eval_examples(num_eval, data_seed, pretrain.task_of(ckpt)),
      processor)
  types = word_types(arrays["tokens"], processor)
  n = vlm.num_visual_tokens
  acc = {"full": token_accuracy(vlm, params, arrays, demo_eval.full_selection,
                                n, types)}
  for k in ks:
    acc[f"oracle K={k}"] = token_accuracy(
        vlm, params, arrays, demo_eval.oracle_selection, k, types)
  acc[f"background only K={n // 2}"] = token_accuracy(
      vlm, params, arrays, background_selection, n // 2, types)
  few = {key: v[:attention_examples] for key, v in arrays.items()}
  shares = attention_shares(vlm, params, few, types[:attention_examples])
  return {"accuracy": acc, "attention": shares}


def format_report(result: dict) -> str:
  lines = ["Per-token accuracy by word type (teacher forcing):", "",
           "| tokens | " + " | ".join(WORD_TYPES) + " | exact match |",
           "|---|" + "---|" * (len(WORD_TYPES) + 1)]
  for name, row in result["accuracy"].items():
    lines.append(f"| {name} | " + " | ".join(
        f"{row[t]:.3f}" if t in row else "" for t in WORD_TYPES)
                 + f" | {row['exact_match']:.3f} |")
  for layer, shares in enumerate(result["attention"]):
    lines += ["", f"Decoder layer {layer}: attention mass from the rows "
              "predicting each word type (all tokens kept):", "",
              "| word | objects | background | text |", "|---|---|---|---|"]
    for t, (o, g, x) in shares.items():
      lines.append(f"| {t} | {o:.3f} | {g:.3f} | {x:.3f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m autoselect_jax.demo.diagnose",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True,
                 help="a demo VLM folder (WORKDIR/frozen_vlm)")
  p.add_argument("--num_eval", type=int, default=500)
  p.add_argument("--ks", default="4,8,16")
  p.add_argument("--data_seed", type=int, default=None,
                 help="the held-out images' stream; default: the one the "
                      "VLM was pre-trained on")
  a = p.parse_args(argv)
  seed = (pretrain.data_seed_of(a.checkpoint) if a.data_seed is None
          else a.data_seed)
  result = diagnose(a.checkpoint, num_eval=a.num_eval, data_seed=seed,
                    ks=[int(k) for k in a.ks.split(",")])
  print(format_report(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
