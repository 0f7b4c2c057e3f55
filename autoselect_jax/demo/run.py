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
from autoselect_jax.demo import pretrain
from autoselect_jax.models import get_variant
from autoselect_jax.demo.synthetic import SyntheticSource
from autoselect_jax.method import select_topk
from autoselect_jax.training.config import Checker, ConfigError


def _budgets(c: ml_collections.ConfigDict) -> list[int]:
  try:
    return [int(k) for k in str(c.demo.budgets).split(",")]
  except ValueError:
    raise ConfigError(f"demo.budgets={c.demo.budgets!r}: expected integers "
                      "like '4,8,16'", "demo.budgets") from None


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
  n = get_variant("demo").num_image_tokens
  ch.need(all(1 <= k <= n for k in _budgets(c)), "demo.budgets",
          f"must lie in [1, {n}] (the demo VLM's visual tokens)")


def frozen_vlm(c: ml_collections.ConfigDict, workdir: str) -> str:
  """The pre-trained frozen VLM's checkpoint folder (trained on first use)."""
  d = c.demo
  log = print if jax.process_index() == 0 else (lambda *_: None)
  return pretrain.pretrain_vlm(
      workdir, steps=d.pretrain_steps, batch_size=d.pretrain_batch_size,
      seed=d.pretrain_seed, data_seed=d.data_seed, num_train=d.num_train,
      lr=d.pretrain_lr, log=log)


def sources(c: ml_collections.ConfigDict):
  d = c.demo
  train = SyntheticSource(d.data_seed, 0, d.num_train, c.data.prompt)
  val = SyntheticSource(d.data_seed, demo_data.EVAL_START + d.num_eval,
                        d.num_val, c.data.prompt)
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
             "random": demo_eval.random_selection,
             "oracle": demo_eval.oracle_selection}
  examples = demo_data.eval_examples(d.num_eval, d.data_seed)
  table = demo_eval.selection_table(vlm, frozen, setup.processor, examples,
                                    ks, methods, seed=c.seed)
  kept = kept_tokens(obj, vlm, frozen, params, examples[:NUM_KEPT_SHOWN], ks)
  if jax.process_index() == 0:
    print(f"\nCaption exact match on {d.num_eval} held-out images (AutoSelect "
          f"trained at K={c.autoselect.k}; evaluation {time.time() - t0:.0f}s):")
    print(demo_eval.format_table(table, vlm.num_visual_tokens))
    with open(os.path.join(workdir, "demo_table.json"), "w") as f:
      json.dump({"table": {m: {str(k): v for k, v in row.items()}
                           for m, row in table.items()},
                 "num_eval": d.num_eval, "trained_k": c.autoselect.k,
                 "seed": c.seed, "autoselect_kept": kept}, f, indent=2)
  return table


NUM_KEPT_SHOWN = 4


def kept_tokens(obj, vlm, frozen, params, examples, ks) -> dict:
  """{str(K): the visual tokens the Scorer keeps, per example (ascending)}
  for the first few held-out images: what AutoSelect chose, for the record."""
  images = demo_data.scale_images(np.stack([e.image for e in examples]))
  scores = obj.scores(params, vlm.encode_image(frozen, images))
  return {str(k): np.asarray(select_topk(scores, k)).tolist()
          for k in ks}
