"""The embedded demo's glue for `python -m autoselect_jax.train --config
configs/demo.py`: the frozen VLM (pre-trained here, cached in the workdir),
the synthetic data sources, and the final accuracy table."""

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
from autoselect_jax.demo.synthetic import SyntheticSource


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
  ks = [int(k) for k in str(d.budgets).split(",")]
  t0 = time.time()
  autoselect = demo_eval.scores_selection(
      lambda feats, ctx: obj.scores(ctx["autoselect"], feats))
  methods = {"AutoSelect": (autoselect, {"autoselect": params}),
             "random": demo_eval.random_selection,
             "oracle": demo_eval.oracle_selection}
  examples = demo_data.eval_examples(d.num_eval, d.data_seed)
  table = demo_eval.selection_table(vlm, frozen, setup.processor, examples,
                                    ks, methods, seed=c.seed)
  if jax.process_index() == 0:
    print(f"\nCaption exact match on {d.num_eval} held-out images (AutoSelect "
          f"trained at K={c.autoselect.k}; evaluation {time.time() - t0:.0f}s):")
    print(demo_eval.format_table(table, vlm.num_visual_tokens))
    with open(os.path.join(workdir, "demo_table.json"), "w") as f:
      json.dump({"table": {m: {str(k): v for k, v in row.items()}
                           for m, row in table.items()},
                 "num_eval": d.num_eval, "trained_k": c.autoselect.k,
                 "seed": c.seed}, f, indent=2)
  return table
