"""Pre-trains the demo's tiny PaliGemma on the shapes task, with all visual tokens.

  python -m autoselect_jax.demo.pretrain --workdir DIR

trains (or finds cached) `DIR/frozen_vlm`, a normal checkpoint folder
(`checkpoints.store`), then prints caption exact match of the full model and
of oracle / random token subsets at K = 4, 8, 16 on held-out images: the check
that the task rewards choosing the right tokens (the trap, docs/demo_task.md).

Every parameter trains with next-token loss on "caption en" -> caption (loss
on the suffix only, prefix-LM mask), AdamW with linear warm-up and cosine
decay. The SigLIP position table starts as 2-D sin-cos values (it stays
learnable): random learned positions left position words at chance for
hundreds of steps in the feasibility study.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from autoselect_jax.checkpoints import store
from autoselect_jax.demo import synthetic
from autoselect_jax.data.processor import Processor
from autoselect_jax.demo import data as demo_data
from autoselect_jax.demo import evaluate as demo_eval
from autoselect_jax.demo import tokenizer as demo_tokenizer
from autoselect_jax.progress import Progress
from autoselect_jax.models import (VLM, PaliGemmaConfig, get_variant,
                                   grid_index, next_token_nll)

CKPT_SUBDIR = "frozen_vlm"
META_FILE = "demo_pretrain.json"


def posemb_sincos_2d(grid: int, width: int, temperature: float = 10_000.0):
  """(1, grid*grid, width) float32: [sin x, cos x, sin y, cos y] features,
  tokens in row-major order (row * grid + col), as the patch embedding."""
  if width % 4:
    raise ValueError(f"width={width} must be a multiple of 4 for 2-D sin-cos")
  y, x = np.mgrid[:grid, :grid].astype(np.float32)
  omega = np.arange(width // 4, dtype=np.float32) / max(width // 4 - 1, 1)
  omega = 1.0 / temperature ** omega
  y = y.reshape(-1)[:, None] * omega[None]
  x = x.reshape(-1)[:, None] * omega[None]
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


def init_params(vlm: VLM, seed: int):
  """Random VLM params, adjusted for training from scratch.

  - SigLIP's position table starts as 2-D sin-cos values.
  - The (tied) token embedding gets std D^-1/2 instead of Gemma's 1: inputs
    (scaled by sqrt(D)) then have unit scale and initial logits std ~1, not
    ~sqrt(D) (an initial loss far above log V).
  - The first SigLIP block's attention output projection starts at zero, so
    that block begins as a per-patch MLP on the linear patch embedding (the
    feasibility study's MLP patch embedding): with it, 1000 steps of batch 64
    of a 2-block-decoder VLM reached 0.942 caption exact match (full 64
    tokens), oracle 0.726 vs random 0.184 at K=8; without it 600 x 32 steps
    reached 0.40.
  """
  params = vlm.init_params(jax.random.key(seed))
  c = vlm.config
  pos = params["img"]["pos_embedding"]
  table = jnp.asarray(posemb_sincos_2d(c.vision.grid, c.vision.width),
                      pos.dtype)
  emb = params["llm"]["embedder"]["input_embedding"]
  emb = emb * jnp.asarray(c.llm.width ** -0.5, emb.dtype)
  blocks = params["img"]["Transformer"]["encoderblock"]
  attn = blocks["MultiHeadDotProductAttention_0"]
  out = {**attn["out"], "kernel": attn["out"]["kernel"].at[0].set(0.0)}
  blocks = {**blocks, "MultiHeadDotProductAttention_0": {**attn, "out": out}}
  img = {**params["img"], "pos_embedding": table,
         "Transformer": {**params["img"]["Transformer"],
                         "encoderblock": blocks}}
  return {**params,
          "img": img,
          "llm": {**params["llm"], "embedder": {"input_embedding": emb}}}


def caption_loss(vlm: VLM, params, batch):
  """Mean next-token cross-entropy over suffix tokens; and token accuracy."""
  images = demo_data.scale_images(batch["images"])
  img = vlm.project(params, vlm.encode_image(params, images))   # (B, N, D)
  b, n = img.shape[:2]
  tokens = batch["tokens"]
  seq = vlm.sequence(params, img, grid_index(b, n), n, tokens,
                     batch["input_mask"], batch["mask_ar"])
  hidden, _ = vlm.run_llm(params, seq.embeddings, seq.positions,
                          seq.attention_mask())
  logits = vlm.logits(params, seq.text_predictors(hidden, tokens.shape[1]))
  w = batch["loss_mask"].astype(bool)
  total, count = next_token_nll(logits, tokens, w)
  denom = jnp.maximum(count, 1.0)
  acc = jnp.sum((jnp.argmax(logits, -1) == tokens) & w) / denom
  return total / denom, acc


def lr_scale_tree(params, lr_scale: dict[str, float]):
  """Per-leaf update multipliers: the first `lr_scale` key that prefixes a
  leaf's "/"-joined path sets its scale (0 freezes it), 1 otherwise. A key
  that matches no leaf is an error (a misspelt path would silently train)."""
  names = jax.tree_util.tree_map_with_path(
      lambda path, _: "/".join(str(getattr(k, "key", k)) for k in path),
      params)
  under = lambda name, key: name == key or name.startswith(key + "/")
  every = jax.tree_util.tree_leaves(names)
  for key in lr_scale:
    if not any(under(name, key) for name in every):
      raise ValueError(f"lr_scale key {key!r} matches no parameter; "
                       f"e.g. {sorted(every)[:3]}")
  return jax.tree.map(
      lambda name: next((float(v) for key, v in lr_scale.items()
                         if under(name, key)), 1.0), names)


def parse_lr_scale(text: str) -> dict[str, float]:
  """"PATH=SCALE,..." (e.g. "img/pos_embedding=0") -> {path: scale}."""
  out = {}
  for item in filter(None, (t.strip() for t in str(text).split(","))):
    key, eq, value = item.partition("=")
    try:
      scale = float(value)
    except ValueError:
      scale = -1.0
    if not eq or not key or scale < 0:
      raise ValueError(f"lr_scale item {item!r}: expected PATH=SCALE with "
                       "SCALE >= 0, e.g. img/pos_embedding=0")
    out[key] = scale
  return out


def make_optimizer(steps: int, lr: float, warmup: int, weight_decay: float,
                   scales=None):
  """AdamW, warm-up + cosine; `scales` (a tree like the params, from
  `lr_scale_tree`) multiplies each leaf's update, weight decay included."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps=min(warmup, steps - 1), decay_steps=steps,
      end_value=lr * 0.01)
  parts = [optax.clip_by_global_norm(1.0),
           optax.adamw(schedule, b2=0.99, weight_decay=weight_decay)]
  if scales is not None:
    parts.append(optax.stateless(
        lambda updates, _: jax.tree.map(lambda u, s: u * s, updates,
                                        scales)))
  return optax.chain(*parts)


def _write_folder(meta: dict) -> Callable[[str], None]:
  def write(folder):
    demo_tokenizer.write_tokenizer(folder)
    with open(os.path.join(folder, META_FILE), "w") as f:
      json.dump(meta, f, indent=2)
  return write


def make_processor(config: PaliGemmaConfig, folder: str | None = None
                   ) -> Processor:
  """Processor over the demo tokenizer (from a checkpoint folder, or fresh)."""
  tok = demo_tokenizer.load_tokenizer(folder)
  if len(tok) > config.llm.vocab_size:
    raise ValueError(f"the demo tokenizer has {len(tok)} ids, the model's "
                     f"vocabulary only {config.llm.vocab_size}")
  return Processor(tok, config)  # Checks pad/eos/bos/<image> ids.


def pretrain_vlm(workdir: str, *, steps: int = 600, batch_size: int = 64,
                 seed: int = 0, data_seed: int = 0, num_train: int = 24_000,
                 lr: float = 2e-3, warmup: int = 50,
                 weight_decay: float = 1e-4,
                 lr_scale: dict[str, float] | None = None,
                 variant: str | PaliGemmaConfig = "demo",
                 log_every: int = 50,
                 spec: synthetic.TaskSpec = synthetic.TaskSpec(),
                 log: Callable[[str], None] = print,
                 progress=None) -> str:
  """Returns `workdir/frozen_vlm`, training and saving it unless it exists.

  seed: initialisation and batch order; data_seed: the task's example stream
  (training examples are its indices [0, num_train)); variant: a VARIANTS
  name or a config (its image grid must match `spec`); lr_scale: update
  multipliers by parameter path prefix (`lr_scale_tree`), e.g.
  {"img/pos_embedding": 0.0} keeps the sin-cos table fixed.
  """
  lr_scale = dict(lr_scale or {})
  ckpt = os.path.join(workdir, CKPT_SUBDIR)
  name = variant if isinstance(variant, str) else "custom"
  if os.path.exists(os.path.join(ckpt, store.CONFIG_FILE)):
    _check_cached(ckpt, dict(variant=name, steps=steps,
                             batch_size=batch_size, seed=seed,
                             data_seed=data_seed, num_train=num_train, lr=lr,
                             lr_scale=lr_scale,
                             task=dataclasses.asdict(spec)))
    log(f"pretrain: cache hit, using the frozen VLM in {ckpt}")
    return ckpt
  if steps < 1 or batch_size < 1 or num_train < 1:
    raise ValueError("steps, batch_size and num_train must be positive")
  t0 = time.time()
  config = (get_variant(variant) if isinstance(variant, str)
            else variant.validate())
  if (spec.image_size, spec.patch_size) != (config.vision.image_size,
                                            config.vision.patch_size):
    raise ValueError(f"task images {spec.image_size}px / {spec.patch_size}px "
                     f"patches do not match the model's "
                     f"{config.vision.image_size}px / "
                     f"{config.vision.patch_size}px")
  vlm = VLM(config, unroll=True)  # Two layers: unrolled is ~15% faster on CPU.
  processor = make_processor(config)
  arrays = demo_data.encode_examples(
      demo_data.train_examples(num_train, data_seed, spec), processor)
  del arrays["object_mask"]
  log(f"pretrain: {num_train} training examples ready "
      f"({time.time() - t0:.1f}s); text length {arrays['tokens'].shape[1]}")

  params = init_params(vlm, seed)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  tx = make_optimizer(steps, lr, warmup, weight_decay,
                      lr_scale_tree(params, lr_scale) if lr_scale else None)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch):
    (loss, acc), grads = jax.value_and_grad(
        lambda p: caption_loss(vlm, p, batch), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  log(f"pretrain: {name} VLM, {num_params / 1e6:.2f}M params, {steps} "
      f"steps of batch {batch_size}, lr {lr}")
  order = np.random.default_rng(seed)
  perm, pos = order.permutation(num_train), 0
  t_train = time.time()
  bar = Progress(steps, "pretrain", unit="step", stream=progress)
  for step in range(1, steps + 1):
    if pos + batch_size > num_train:
      perm, pos = order.permutation(num_train), 0
    take = np.sort(perm[pos:pos + batch_size])
    pos += batch_size
    batch = {k: v[take] for k, v in arrays.items()}
    params, opt_state, loss, acc = train_step(params, opt_state, batch)
    bar.update()
    if step % log_every == 0 or step == steps:
      log(f"pretrain: step {step:4d}/{steps} loss {float(loss):.4f} "
          f"token acc {float(acc):.3f} elapsed {time.time() - t0:.1f}s")
  bar.close()
  train_s = time.time() - t_train
  meta = dict(variant=name, steps=steps, batch_size=batch_size, seed=seed,
              data_seed=data_seed, num_train=num_train, lr=lr, warmup=warmup,
              weight_decay=weight_decay, lr_scale=lr_scale, final_loss=float(loss),
              train_seconds=round(train_s, 1),
              task=dataclasses.asdict(spec))
  store.save_checkpoint(
      ckpt, params, config, write_tokenizer=_write_folder(meta),
      source=f"autoselect_jax.demo.pretrain steps={steps} seed={seed}")
  log(f"pretrain: saved {ckpt} (training loop {train_s:.1f}s, "
      f"{time.time() - t0:.1f}s in all)")
  return ckpt


def read_meta(ckpt: str) -> dict | None:
  """The settings a frozen VLM folder was pre-trained with (its
  `META_FILE`), None for a folder from before the metadata existed."""
  path = os.path.join(ckpt, META_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _check_cached(ckpt: str, asked: dict) -> None:
  """A cached VLM must be the one asked for: a ValueError names the fields
  that differ (a cache from before the metadata existed is accepted)."""
  meta = read_meta(ckpt)
  if meta is None:
    return
  if isinstance(meta.get("task"), dict):  # Fields added later: defaults.
    meta["task"] = {**dataclasses.asdict(synthetic.TaskSpec()),
                    **meta["task"]}
  meta.setdefault("lr_scale", {})
  diff = {k: (meta[k], v) for k, v in asked.items()
          if k in meta and meta[k] != v}
  if diff:
    parts = ", ".join(f"{k}: {a!r} cached, {b!r} asked"
                      for k, (a, b) in sorted(diff.items()))
    raise ValueError(f"{ckpt} holds a frozen VLM pre-trained with other "
                     f"settings ({parts}); use another workdir or delete it")


def task_of(ckpt: str) -> synthetic.TaskSpec:
  """The task a frozen VLM folder was pre-trained on (its metadata; the
  default task for a folder without it)."""
  task = (read_meta(ckpt) or {}).get("task", {})
  try:
    return synthetic.TaskSpec(**task).validate()
  except (TypeError, ValueError) as e:
    raise ValueError(f"{os.path.join(ckpt, META_FILE)}: bad task {task}: "
                     f"{e}") from None


def data_seed_of(ckpt: str) -> int:
  """The task stream a frozen VLM folder was pre-trained on (0 without
  metadata)."""
  return int((read_meta(ckpt) or {}).get("data_seed", 0))


def load_frozen(ckpt: str):
  """(VLM, params, Processor) of a checkpoint folder."""
  config = store.load_config(ckpt)
  return VLM(config), store.load_params(ckpt, config), make_processor(
      config, ckpt)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--num_train", type=int, default=24_000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data_seed", type=int, default=0)
  p.add_argument("--num_eval", type=int, default=500)
  p.add_argument("--ks", default="4,8,16")
  p.add_argument("--max_distractors", type=int, default=0,
                 help="unnamed shapes per image (the harder task), 0 to N")
  p.add_argument("--lr_scale", default="",
                 help="PATH=SCALE,... update multipliers by parameter path "
                      "prefix (0 freezes), e.g. img/pos_embedding=0")
  a = p.parse_args(argv)
  lr_scale = parse_lr_scale(a.lr_scale)
  ks = [int(k) for k in a.ks.split(",")]
  t0 = time.time()
  spec = synthetic.TaskSpec(max_distractors=a.max_distractors).validate()
  ckpt = pretrain_vlm(a.workdir, steps=a.steps, batch_size=a.batch_size,
                      lr=a.lr, num_train=a.num_train, seed=a.seed,
                      data_seed=a.data_seed, spec=spec, lr_scale=lr_scale)
  vlm, params, processor = load_frozen(ckpt)
  t1 = time.time()
  table = demo_eval.selection_table(
      vlm, params, processor,
      demo_data.eval_examples(a.num_eval, a.data_seed, spec),
      ks, seed=a.seed)
  print(f"\nCaption exact match, {a.num_eval} held-out images "
        f"(evaluation {time.time() - t1:.1f}s, total {time.time() - t0:.1f}s):")
  print(demo_eval.format_table(table, vlm.num_visual_tokens))
  return 0


if __name__ == "__main__":
  sys.exit(main())
