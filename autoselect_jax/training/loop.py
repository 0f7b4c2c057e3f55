"""The AutoSelect training loop: frozen VLM, trainable Scorer + Denoiser.

One jitted step over (state, frozen params, batch); `state` holds the
trainable params, optimizer state, step and RNG and is donated. The frozen
params are an argument, never part of the optimizer state, so they can't be
updated. Everything is laid out on a (data, fsdp) mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from autoselect_jax.checkpoints import store
from autoselect_jax.checkpoints.scorer import export_scorer
from autoselect_jax.data.processor import Processor
from autoselect_jax.models import VLM
from autoselect_jax.training import sharding as shd
from autoselect_jax.training.checkpoint import TrainCheckpointer
from autoselect_jax.training.config import parse_k_choices, validate, validate_budget
from autoselect_jax.training.metrics import MetricWriter
from autoselect_jax.training.objective import Objective

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def maybe_initialize_distributed(c: ml_collections.ConfigDict) -> None:
  """jax.distributed.initialize() when the config or environment asks."""
  d = c.distributed
  env = any(v in os.environ for v in ("JAX_COORDINATOR_ADDRESS",
                                      "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                      "MEGASCALE_COORDINATOR_ADDRESS"))
  if d.initialize == "no" or (d.initialize == "auto" and not env
                              and not d.coordinator_address):
    return
  # CPU processes need a collectives backend; it has no effect on GPU/TPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if d.coordinator_address:
    kwargs = dict(coordinator_address=d.coordinator_address,
                  num_processes=d.num_processes, process_id=d.process_id)
  jax.distributed.initialize(**kwargs)


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int):
  o = c.optim
  warmup = min(o.warmup_steps, max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.lr, warmup, max(total_steps, warmup + 1), end_value=0.0)
  chain = []
  if o.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2,
                           weight_decay=o.weight_decay))
  return optax.chain(*chain), schedule


def tau_at(c: ml_collections.ConfigDict, step):
  from autoselect_jax.method import tau_schedule
  return tau_schedule(step, c.tau.start, c.tau.end, c.tau.steps)


@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built from a config."""
  config: ml_collections.ConfigDict
  mesh: Any
  vlm: VLM
  frozen: Any
  processor: Processor
  objective: Objective
  ckpt_dir: str


def build(c: ml_collections.ConfigDict, workdir: str) -> Setup:
  mesh = shd.make_mesh(c.mesh.data, c.mesh.fsdp)
  validate(c, num_devices=mesh.size, process_count=jax.process_count())
  if c.demo.enabled:
    from autoselect_jax.demo import run as demo_run
    ckpt = demo_run.frozen_vlm(c, workdir)
  else:
    ckpt = c.model.checkpoint
  vlm_config = store.load_config(ckpt)
  validate_budget(c, vlm_config.num_image_tokens)
  vlm = VLM(vlm_config, DTYPES[c.model.dtype], c.model.remat,
            c.model.scan_unroll or True)
  frozen_sharding = shd.param_shardings(vlm.abstract_params(), mesh,
                                        c.sharding.frozen)
  frozen = store.load_params(ckpt, vlm_config, sharding=frozen_sharding)
  processor = Processor.from_checkpoint(ckpt, vlm_config)
  return Setup(c, mesh, vlm, frozen, processor, Objective.from_config(c, vlm),
               ckpt)


def _sources(c: ml_collections.ConfigDict):
  if c.data.source == "synthetic":
    from autoselect_jax.demo import run as demo_run
    return demo_run.sources(c)
  from autoselect_jax.data.pipeline import make_source
  kw = dict(prompt=c.data.prompt, image_column=c.data.image_column,
            caption_column=c.data.caption_column)
  train = make_source(c.data.source, c.data.train_path, **kw)
  val = make_source(c.data.source, c.data.val_path, **kw) if c.data.val_path else None
  return train, val


def train(c: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains; returns a summary (final step, losses, paths)."""
  from autoselect_jax.data.pipeline import make_loader
  maybe_initialize_distributed(c)
  setup = build(c, workdir)
  mesh, obj = setup.mesh, setup.objective
  train_src, val_src = _sources(c)
  global_batch = c.batch_size
  local_batch = global_batch // jax.process_count()
  steps = c.num_steps or (len(train_src) // global_batch) * c.data.num_epochs
  if steps <= 0:
    raise ValueError(f"{len(train_src)} training examples make no full batch "
                     f"of {global_batch}")
  loader = make_loader(train_src, setup.processor, batch_size=local_batch,
                       max_text_len=c.data.max_text_len, seed=c.seed,
                       worker_count=c.data.worker_count,
                       process_index=jax.process_index(),
                       process_count=jax.process_count())
  iterator = iter(loader)
  tx, lr_schedule = make_optimizer(c, steps)

  rng = jax.random.key(c.seed)
  init_rng, rng = jax.random.split(rng)
  abstract_trainable = jax.eval_shape(obj.init, init_rng)
  trainable_sharding = shd.param_shardings(abstract_trainable, mesh,
                                           c.sharding.trainable)
  state_sharding = {
      "params": trainable_sharding,
      "opt_state": None,  # Filled in below from the abstract optimizer state.
      "step": shd.replicated(mesh), "rng": shd.replicated(mesh)}

  def init_state(key):
    params = obj.init(key)
    return {"params": params, "opt_state": tx.init(params),
            "step": jnp.int32(0), "rng": jax.random.key_data(rng)}

  abstract_state = jax.eval_shape(init_state, init_rng)
  state_sharding["opt_state"] = shd.param_shardings(
      abstract_state["opt_state"], mesh, c.sharding.trainable)
  state = jax.jit(init_state, out_shardings=state_sharding)(init_rng)

  ckptr = TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                            keep=c.checkpoint.keep,
                            async_save=c.checkpoint.async_save)
  start = ckptr.latest_step() or 0
  if start:
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, state_sharding)
    state = ckptr.restore(start, target, iterator)

  ks = parse_k_choices(c.autoselect.k_choices) or (c.autoselect.k,)
  draw_k = len(ks) > 1

  def train_step(state, frozen, batch):
    rng = jax.random.wrap_key_data(state["rng"])
    rng, step_rng, k_rng = jax.random.split(rng, 3)
    step = state["step"]
    tau = tau_at(c, step)

    def loss_fn(params):
      if not draw_k:
        return obj.train_loss(params, frozen, batch, step_rng, tau, ks[0])
      branches = [functools.partial(obj.train_loss, k=k) for k in ks]
      i = jax.random.randint(k_rng, (), 0, len(ks))
      return jax.lax.switch(
          i, [lambda p, f, b, r, t, fn=fn: fn(p, f, b, r, t) for fn in branches],
          params, frozen, batch, step_rng, tau)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "tau": tau,
               "lr": lr_schedule(step),
               "skipped": jnp.sum(~batch["valid"]),
               "truncated": jnp.sum(batch["truncated"]), **aux}
    new_state = {"params": params, "opt_state": opt_state, "step": step + 1,
                 "rng": jax.random.key_data(rng)}
    return new_state, metrics

  batch_sharding = shd.batch_sharding(mesh)
  frozen_sharding = jax.tree_util.tree_map(lambda x: x.sharding, setup.frozen)
  step_fn = jax.jit(train_step,
                    in_shardings=(state_sharding, frozen_sharding, batch_sharding),
                    out_shardings=(state_sharding, shd.replicated(mesh)),
                    donate_argnums=(0,))
  eval_fn = jax.jit(lambda params, frozen, batch: obj.eval_loss(
      params, frozen, batch, c.autoselect.k),
      in_shardings=(trainable_sharding, frozen_sharding, batch_sharding),
      out_shardings=shd.replicated(mesh))

  writer = MetricWriter(workdir, steps)
  writer.log(f"training AutoSelect K={','.join(map(str, ks))} for {steps} "
             f"steps (batch {global_batch}, {mesh.size} devices, "
             f"{jax.process_count()} processes)"
             + (f"; resuming at step {start}" if start else ""))
  best, bad_evals, last_val, last_train = math.inf, 0, None, {}
  window, t0, n_ex = [], time.time(), 0
  step = start
  stopped_early = False
  while step < steps:
    batch = shd.global_batch(next(iterator), mesh)
    state, metrics = step_fn(state, setup.frozen, batch)
    step += 1
    if c.debug_step_delay:  # Testing aid: widens the window for kill tests.
      time.sleep(c.debug_step_delay)
    window.append(metrics)
    n_ex += global_batch
    if step % c.log_every == 0 or step == steps:
      m = jax.device_get(window)
      avg = {k: float(np.mean([x[k] for x in m])) for k in m[0]}
      for k in ("skipped", "truncated"):
        avg[k] = float(np.sum([x[k] for x in m]))
      dt = time.time() - t0
      avg.update(steps_per_s=len(m) / dt, examples_per_s=n_ex / dt)
      writer.write(step, avg)
      last_train = avg
      window, t0, n_ex = [], time.time(), 0
    if val_src is not None and (step % c.eval_every == 0 or step == steps):
      last_val = evaluate_loss(c, setup, eval_fn, state["params"], val_src)
      writer.write(step, {"loss_topk": last_val}, prefix="val")
      if last_val < best - 1e-4:
        best, bad_evals = last_val, 0
      else:
        bad_evals += 1
      if c.early_stopping_patience and bad_evals >= c.early_stopping_patience:
        writer.log(f"early stopping at step {step}: validation loss has not "
                   f"improved for {bad_evals} evaluations")
        stopped_early = True
    if step % c.checkpoint.every == 0 or step == steps or stopped_early:
      ckptr.save(step, state, iterator, force=True)
    if stopped_early:
      break
  ckptr.close()
  scorer_dir = os.path.join(workdir, "scorer")
  if not os.path.exists(scorer_dir):
    export_scorer(scorer_dir, state["params"]["scorer"],
                  obj.scorer_export_config(setup.ckpt_dir))
  writer.close()
  return {"step": step, "state": state, "setup": setup, "val_loss": last_val,
          "train_metrics": last_train,
          "scorer_dir": scorer_dir, "stopped_early": stopped_early}


def evaluate_loss(c, setup: Setup, eval_fn, params, val_src) -> float:
  """Mean next-token loss on validation data with HARD top-K (the deployed
  path), over `eval_batches` batches (0: all)."""
  from autoselect_jax.data.pipeline import make_loader
  local = c.batch_size // jax.process_count()
  loader = make_loader(val_src, setup.processor, batch_size=local,
                       max_text_len=c.data.max_text_len, seed=0, shuffle=False,
                       num_epochs=1, process_index=jax.process_index(),
                       process_count=jax.process_count())
  total, count = 0.0, 0.0
  for i, batch in enumerate(loader):
    if c.eval_batches and i >= c.eval_batches:
      break
    s, n = jax.device_get(eval_fn(params, setup.frozen,
                                  shd.global_batch(batch, setup.mesh)))
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)
