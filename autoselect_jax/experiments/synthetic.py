"""The controlled experiment on the demo's task: every selection method at
every budget over seeds, and AutoSelect's training-choice ablations.

  python -m autoselect_jax.experiments.synthetic --seeds 0,1,2 --out DIR

For each task (`easy`: the demo's; `hard`: with unnamed distractor shapes)
and each seed s (the data stream, the frozen VLM's initialisation and batch
order, and the Scorer's initialisation are all seed s):
1. pre-trains, or reuses, the frozen VLM in DIR/TASK/seed{s}/frozen_vlm
   (configs/demo.py's settings);
2. measures the full model and every training-free baseline at each K;
3. trains AutoSelect and each ablation variant through the training system
   (`training.loop.train` with the demo client, DIR/TASK/seed{s}/VARIANT)
   and measures its hard top-K;
4. writes DIR/results.json, DIR/results.md (mean +- standard deviation over
   the seeds) and DIR/accuracy_vs_k_{TASK}.png, DIR/ablations_{TASK}.png
   (error bars: the same standard deviation).
Each measured row is saved at once (DIR/TASK/seed{s}/table.json), so a
killed run resumes where it stopped. `--quick` is the shortened setting CI
runs: it checks the pipeline, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

import ml_collections

from autoselect_jax.experiments import summary

# The training choices compared (config overrides of the demo's AutoSelect:
# VP noise gate with noise, diagonal Denoiser, K drawn per step from 4, 8,
# 16, original positions, a Scorer as wide as the vision encoder).
VARIANTS: dict[str, dict] = {
    "AutoSelect": {},
    "scale gate": {"autoselect.gate": "scale"},
    "Gumbel-STE": {"autoselect.gate": "gumbel_ste"},
    "no noise": {"autoselect.noise": False},
    "global Denoiser": {"autoselect.denoiser": "global"},
    "no Denoiser": {"autoselect.denoiser": "none"},
    "fixed K=8": {"autoselect.k_choices": ""},
    "packed": {"autoselect.position_policy": "packed"},
    "narrow Scorer": {"autoselect.scorer_width": 32},
}
# demo.* overrides per task.
TASKS: dict[str, dict] = {
    "easy": {},
    "hard": {"demo.min_distractors": 2, "demo.max_distractors": 6},
}
# The shortened run (CI): tiny data, a few steps; the pipeline, not numbers.
QUICK = {
    "demo.num_train": 256, "demo.num_eval": 40, "demo.num_val": 32,
    "demo.pretrain_steps": 6, "demo.pretrain_batch_size": 16,
    "batch_size": 16, "num_steps": 3, "log_every": 3, "eval_every": 3,
    "eval_batches": 1, "checkpoint.every": 3, "tau.steps": 3,
    "optim.warmup_steps": 1,
}
TABLE_FILE = "table.json"


def demo_config(overrides: dict) -> ml_collections.ConfigDict:
  """configs/demo.py's config with `{"a.b": value}` overrides applied."""
  from configs import demo
  c = demo.get_config()
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = c
    for part in path:
      node = node[part]
    if leaf not in node:
      raise ValueError(f"unknown config field {key!r}")
    node[leaf] = value
  return c


def seed_config(base: dict, task: str, seed: int,
                variant: str = "AutoSelect") -> ml_collections.ConfigDict:
  return demo_config({**base, **TASKS[task], **VARIANTS[variant],
                      "seed": seed, "demo.data_seed": seed,
                      "demo.pretrain_seed": seed})


def _load(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _save(path: str, obj: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def run_seed(out: str, task: str, seed: int, variants: Sequence[str],
             base: dict, log=print) -> dict:
  """Measures every method on one (task, seed); returns {method: {K: em}}
  (K as str), resuming from what DIR/TASK/seed{s}/table.json holds."""
  from autoselect_jax.demo import data as demo_data
  from autoselect_jax.demo import evaluate as demo_eval
  from autoselect_jax.demo import pretrain, run as demo_run
  from autoselect_jax.training import loop
  from autoselect_jax.training.client import load_client

  folder = os.path.join(out, task, f"seed{seed}")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, TABLE_FILE)
  table = _load(path)
  c = seed_config(base, task, seed)
  ks = [int(k) for k in str(c.demo.budgets).split(",")]
  spec = demo_run.task_spec(c)
  examples = demo_data.eval_examples(c.demo.num_eval, seed, spec)
  missing = [m for m in ("full", *demo_eval.BASELINES) if m not in table]
  if missing:
    ckpt = demo_run.frozen_vlm(c, folder)
    vlm, frozen, processor = pretrain.load_frozen(ckpt)
    t0 = time.time()
    rows = demo_eval.selection_table(
        vlm, frozen, processor, examples, ks,
        {m: demo_eval.BASELINES[m] for m in missing if m != "full"},
        seed=seed)
    table.update({m: {str(k): v for k, v in r.items()} for m, r in rows.items()
                  if m in missing})
    table.setdefault("_seconds", {})["baselines"] = round(time.time() - t0, 1)
    _save(path, table)
  for name in variants:
    if name in table:
      continue
    cv = seed_config(base, task, seed, name)
    cv.demo.frozen_workdir = folder
    t0 = time.time()
    log(f"[{task} seed {seed}] training {name}")
    result = loop.train(cv, os.path.join(folder, _slug(name)),
                        load_client(cv.client))
    setup, params = result["setup"], result["state"]["params"]
    select = demo_eval.scores_selection(
        lambda feats, ctx, obj=setup.objective: obj.scores(ctx["p"], feats))
    row = demo_eval.selection_table(
        setup.vlm, setup.frozen, setup.processor, examples, ks,
        {name: (select, {"p": params})}, seed=seed,
        policy=cv.autoselect.position_policy)[name]
    table[name] = {str(k): v for k, v in row.items()}
    table.setdefault("_seconds", {})[name] = round(time.time() - t0, 1)
    _save(path, table)
  return table


def _recorded_seconds(out: str, tables) -> float:
  """The measured rows' own times plus their VLMs' pre-training loops (what
  a --report-only summary can know of the runs' cost)."""
  total = 0.0
  for task, per_seed in tables.items():
    for s, tab in per_seed.items():
      total += sum(tab.get("_seconds", {}).values())
      meta = _load(os.path.join(out, task, f"seed{s}", "frozen_vlm",
                                "demo_pretrain.json"))
      total += meta.get("train_seconds", 0.0)
  return total


def _slug(name: str) -> str:
  return name.lower().replace(" ", "_").replace("-", "_")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--out", required=True)
  p.add_argument("--tasks", default="easy,hard",
                 help=f"comma-separated, of {', '.join(TASKS)}")
  p.add_argument("--variants", default="",
                 help="comma-separated AutoSelect variants (default: "
                      "AutoSelect only on easy, every variant on hard): "
                      + ", ".join(VARIANTS))
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a demo config override (JSON value), e.g. "
                      "--set demo.pretrain_steps=600; repeatable")
  p.add_argument("--quick", action="store_true",
                 help="tiny data and steps: checks the pipeline (CI)")
  p.add_argument("--report-only", action="store_true",
                 help="summarise the rows already measured in --out (of "
                      "the given tasks and seeds); train nothing")
  a = p.parse_args(argv)
  try:
    seeds = [int(s) for s in a.seeds.split(",")]
    tasks = a.tasks.split(",")
    bad = [t for t in tasks if t not in TASKS]
    variants = [v for v in a.variants.split(",") if v]
    bad += [v for v in variants if v not in VARIANTS]
    if bad:
      raise ValueError(f"unknown task or variant: {', '.join(bad)}")
    base = dict(QUICK) if a.quick else {}
    for item in a.set:
      key, _, value = item.partition("=")
      try:
        base[key] = json.loads(value)
      except json.JSONDecodeError:
        base[key] = value
    demo_config(base)  # Unknown fields fail here, before any work.
  except ValueError as e:
    p.error(str(e))
  t0 = time.time()
  tables = {}
  for task in tasks:
    names = variants or (list(VARIANTS) if task == "hard" else ["AutoSelect"])
    if a.report_only:
      found = {s: _load(os.path.join(a.out, task, f"seed{s}", TABLE_FILE))
               for s in seeds}
      tables[task] = {s: t for s, t in found.items() if t}
      if not tables[task]:
        p.error(f"no measured rows for task {task} in {a.out}")
      continue
    tables[task] = {s: run_seed(a.out, task, s, names, base) for s in seeds}
  seconds = (_recorded_seconds(a.out, tables) if a.report_only
             else time.time() - t0)
  result = summary.write(a.out, tables, base, seconds=seconds)
  print(open(result["markdown"]).read())
  print("figures: " + ", ".join(result["figures"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
