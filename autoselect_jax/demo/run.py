"""The embedded demo as a client of the training system (configs/demo.py sets
`client = "autoselect_jax.demo.run"`; see `autoselect_jax.training.client`):
checks of the `demo.*` fields, the frozen VLM (pre-trained here, cached in
the workdir), the synthetic data sources, and the final accuracy table."""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np

from autoselect_jax.demo import data as demo_data
from autoselect_jax.demo import evaluate as demo_eval
from autoselect_jax.checkpoints.store import is_remote
from autoselect_jax.demo import pretrain, synthetic
from autoselect_jax.models import VLM, get_variant
from autoselect_jax.demo.synthetic import SyntheticSource
from autoselect_jax.method import select_topk
from autoselect_jax.training.config import Checker, ConfigError


def _budgets(c: ml_collections.ConfigDict) -> list[int]:
  try:
    return [int(k) for k in str(c.demo.budgets).split(",")]
  except ValueError:
    raise ConfigError(f"demo.budgets={c.demo.budgets!r}: expected integers "
                      "like '4,8,16'", "demo.budgets") from None


def task_spec(c: ml_collections.ConfigDict) -> synthetic.TaskSpec:
  """The task of `demo.*` (distractors: the harder variant)."""
  d = c.demo
  try:
    return synthetic.TaskSpec(min_distractors=d.min_distractors,
                              max_distractors=d.max_distractors).validate()
  except ValueError as e:
    raise ConfigError(f"demo.max_distractors={d.max_distractors}: {e}",
                      "demo.max_distractors") from None


def pretrain_dir(c: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the frozen VLM lives: `demo.frozen_workdir` (shared by several
  runs, e.g. the experiment's variants) or the run's own workdir."""
  return c.demo.frozen_workdir or workdir


def validate(c: ml_collections.ConfigDict) -> None:
  """The demo's fields; runs with the training checks, before pre-training."""
  ch = Checker(c)
  for field in ("data_seed", "pretrain_seed"):
    ch.int_at_least(f"demo.{field}", 0)
  for field in ("pretrain_steps", "pretrain_batch_size", "num_eval"):
    ch.int_at_least(f"demo.{field}", 1)
  for field in ("num_train", "num_val"):
    v = c.demo[field]
    ch.need(isinstance(v, int) and v >= c.batch_size, f"demo.{field}",
            f"must hold at least one batch (batch_size={c.batch_size})")
  ch.real_in("demo.pretrain_lr", 0.0, lo_open=True)
  try:
    n = get_variant(c.demo.variant).num_image_tokens
  except ValueError as e:
    raise ConfigError(f"demo.variant={c.demo.variant!r}: {e}",
                      "demo.variant") from None
  ch.need(all(1 <= k <= n for k in _budgets(c)), "demo.budgets",
          f"must lie in [1, {n}] (the demo VLM's visual tokens)")
  task_spec(c)
  lr_scale(c)


def lr_scale(c: ml_collections.ConfigDict) -> dict[str, float]:
  """`demo.pretrain_lr_scale` as {parameter path prefix: update scale},
  checked against the variant's parameter tree."""
  try:
    scales = pretrain.parse_lr_scale(c.demo.pretrain_lr_scale)
    shapes = jax.eval_shape(
        lambda: VLM(get_variant(c.demo.variant)).init_params(
            jax.random.key(0)))
    pretrain.lr_scale_tree(shapes, scales)
  except ValueError as e:
    raise ConfigError(f"demo.pretrain_lr_scale={c.demo.pretrain_lr_scale!r}: "
                      f"{e}", "demo.pretrain_lr_scale") from None
  return scales


def frozen_vlm(c: ml_collections.ConfigDict, workdir: str) -> str:
  """The pre-trained frozen VLM's checkpoint folder (trained on first use)."""
  d = c.demo
  for field, path in (("workdir", workdir),
                      ("demo.frozen_workdir", d.frozen_workdir)):
    if is_remote(path):  # The VLM cache, table and figures are local files.
      raise ConfigError(f"{field}={path}: the demo writes its frozen VLM, "
                        "table and figures to local disk; give a local folder",
                        field)
  log = print if jax.process_index() == 0 else (lambda *_: None)
  return pretrain.pretrain_vlm(
      pretrain_dir(c, workdir), steps=d.pretrain_steps,
      batch_size=d.pretrain_batch_size,
      seed=d.pretrain_seed, data_seed=d.data_seed, num_train=d.num_train,
      lr=d.pretrain_lr, lr_scale=pretrain.parse_lr_scale(d.pretrain_lr_scale),
      variant=d.variant,
      spec=task_spec(c), log=log)


def sources(c: ml_collections.ConfigDict):
  d = c.demo
  spec = task_spec(c)
  train = SyntheticSource(d.data_seed, 0, d.num_train, c.data.prompt, spec)
  val = SyntheticSource(d.data_seed, demo_data.EVAL_START + d.num_eval,
                        d.num_val, c.data.prompt, spec)
  return train, val


def report(c: ml_collections.ConfigDict, workdir: str, result: dict) -> dict:
  """Caption exact match of full / AutoSelect / random (and oracle) top-K on
  held-out images; prints the table and writes it to workdir/demo_table.json."""
  setup, params = result["setup"], result["state"]["params"]
  obj, vlm, frozen = setup.objective, setup.vlm, setup.frozen
  d = c.demo
  ks = _budgets(c)
  t0 = time.time()
  autoselect = demo_eval.scores_selection(
      lambda feats, ctx: obj.scores(ctx["autoselect"], feats))
  methods = {"AutoSelect": (autoselect, {"autoselect": params}),
             **demo_eval.BASELINES}
  examples = demo_data.eval_examples(d.num_eval, d.data_seed, task_spec(c))
  table = demo_eval.selection_table(vlm, frozen, setup.processor, examples,
                                    ks, methods, seed=c.seed)
  kept = kept_tokens(obj, vlm, frozen, params, examples[:NUM_KEPT_SHOWN], ks)
  trained = c.autoselect.k_choices or str(c.autoselect.k)
  if jax.process_index() == 0:
    figures = draw_figures(workdir, table, vlm, frozen,
                           lambda f: obj.scores(params, f),
                           examples[:NUM_KEPT_SHOWN], c.autoselect.k)
    print(f"\nCaption exact match on {d.num_eval} held-out images (AutoSelect "
          f"trained at K={trained}; evaluation {time.time() - t0:.0f}s):")
    print(demo_eval.format_table(table, vlm.num_visual_tokens))
    with open(os.path.join(workdir, "demo_table.json"), "w") as f:
      json.dump({"table": {m: {str(k): v for k, v in row.items()}
                           for m, row in table.items()},
                 "num_eval": d.num_eval, "trained_k": trained,
                 "seed": c.seed, "autoselect_kept": kept}, f, indent=2)
    print("figures: " + ", ".join(figures))
  return table


NUM_KEPT_SHOWN = 4


def kept_tokens(obj, vlm, frozen, params, examples, ks) -> dict:
  """{str(K): the visual tokens the Scorer keeps, per example (ascending)}
  for the first few held-out images: what AutoSelect chose, for the record."""
  images = demo_data.scale_images(np.stack([e.image for e in examples]))
  scores = obj.scores(params, vlm.encode_image(frozen, images))
  return {str(k): np.asarray(select_topk(scores, k)).tolist()
          for k in ks}


def selection_panels(vlm, frozen, autoselect_scores, examples, k: int,
                     seed: int = 0):
  """[[Panel per method] per example]: AutoSelect (its scores), the oracle
  (the object cells), and the training-free baselines of `demo_eval.BASELINES`
  through the deployed pruners, at budget k."""
  from autoselect_jax.figures.pictures import Panel
  from autoselect_jax.inference import pruners
  images = demo_data.scale_images(np.stack([e.image for e in examples]))
  feats, att = vlm.encode_image(frozen, images, last_attention=True)
  s = np.asarray(autoselect_scores(feats))
  mask = synthetic.object_mask(examples, vlm.num_visual_tokens)
  columns = [("AutoSelect", np.asarray(select_topk(s, k)), s),
             ("oracle", np.asarray(demo_eval.oracle_selection(
                 feats, jax.random.key(seed), k, {"object_mask": mask})),
              mask.astype(np.float32))]
  for name in [m for m in demo_eval.BASELINES if m != "oracle"]:
    pruner, p = pruners.make_pruner(name, seed=seed)
    kept = pruner(p, feats, k, att)
    columns.append((name, np.asarray(kept.index), None if kept.scores is None
                    else np.asarray(kept.scores)))
  return [[Panel(name, idx[i], None if sc is None else sc[i])
           for name, idx, sc in columns] for i in range(len(examples))]


def draw_figures(workdir: str, table, vlm, frozen, autoselect_scores,
                 examples, k: int) -> list[str]:
  """WORKDIR/selection.png (kept tokens per method on a few held-out images
  at the training K) and WORKDIR/accuracy_vs_k.png; returns the paths."""
  from autoselect_jax.figures.pictures import draw_grid_of_examples
  from autoselect_jax.figures.plots import plot_accuracy_vs_k
  n = vlm.num_visual_tokens
  panels = selection_panels(vlm, frozen, autoselect_scores, examples, k)
  pic = draw_grid_of_examples(
      [e.image for e in examples], int(round(n ** 0.5)), panels,
      os.path.join(workdir, "selection.png"),
      title=f"K = {k} of {n} visual tokens", labels=[e.caption for e in
                                                     examples])
  plot = plot_accuracy_vs_k(table, os.path.join(workdir, "accuracy_vs_k.png"),
                            n=n)
  return [pic, plot]
