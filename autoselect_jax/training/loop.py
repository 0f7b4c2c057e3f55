"""The AutoSelect training loop: frozen VLM, trainable Scorer + Denoiser.

One jitted step over (state, frozen params, batch); `state` holds the
trainable params, optimizer state, step and RNG and is donated. The frozen
params are an argument, never part of the optimizer state, so they can't be
updated. Everything is laid out on a (data, fsdp) mesh.

`train` runs these steps, each a function below: check the config and build
the data sources (`prepare`), load the frozen VLM (`build`), initialise the
state (`init_state`), resume it (`restore`), make the jitted functions
(`make_step_fns`), run the steps (`run_steps`, one `train_one_step` and
`after_step` each), and export the Scorer (`finish`).

The workdir is a local folder or a URL (gs://bucket/run): its paths are
joined with `workdir_path`, never os.path, and each writer (checkpoints,
metrics, the Scorer export) handles a URL itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from autoselect_jax.checkpoints import store
from autoselect_jax.checkpoints.scorer import export_scorer
from autoselect_jax.data.processor import Processor
from autoselect_jax.data import pipeline
from autoselect_jax.models import VLM
from autoselect_jax.training import sharding as shd
from autoselect_jax.training.checkpoint import TrainCheckpointer
from autoselect_jax.training.client import Client, load_client
from autoselect_jax.training.config import (ConfigError, parse_k_choices,
                                            validate, validate_budget,
                                            validate_num_steps,
                                            validate_workdir)
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


def workdir_path(workdir: str, name: str) -> str:
  """workdir/name, for a local folder or a URL alike (epath: the path type
  that every writer of the workdir takes)."""
  return str(epath.Path(workdir) / name)


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int):
  """AdamW with linear warm-up and cosine decay to 0 (warm-up < total_steps,
  checked by `validate_num_steps`)."""
  o = c.optim
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.lr, o.warmup_steps, total_steps, end_value=0.0)
  chain = []
  if o.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2,
                           weight_decay=o.weight_decay))
  return optax.chain(*chain), schedule


def tau_at(c: ml_collections.ConfigDict, step):
  from autoselect_jax.method import tau_schedule
  return tau_schedule(step, c.tau.start, c.tau.end, c.tau.steps)


def budgets(c: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The training budgets: a K is drawn among them per step."""
  return parse_k_choices(c.autoselect.k_choices) or (c.autoselect.k,)


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


@dataclasses.dataclass
class Progress:
  """The loop's own state; checkpointed with the train state."""
  step: int = 0
  best_val: float = math.inf
  bad_evals: int = 0
  stopped_early: bool = False
  last_val: Optional[float] = None
  last_train: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return {"best_val": None if math.isinf(self.best_val) else self.best_val,
            "bad_evals": self.bad_evals, "stopped_early": self.stopped_early,
            "last_val": self.last_val}

  @classmethod
  def from_json(cls, step: int, d: dict) -> "Progress":
    best = d.get("best_val")
    return cls(step, math.inf if best is None else float(best),
               int(d.get("bad_evals", 0)), bool(d.get("stopped_early")),
               d.get("last_val"))


# --- before anything heavy ----------------------------------------------------
def prepare(c: ml_collections.ConfigDict, client: Client):
  """Checks the config and builds the sources: (mesh, train, val, steps).

  Runs before the client's VLM provider, so a bad value fails in seconds.
  """
  mesh = shd.make_mesh(c.mesh.data, c.mesh.fsdp)
  validate(c, num_devices=mesh.size, process_count=jax.process_count(),
           client=client)
  train_src, val_src = make_sources(c, client)
  steps = c.num_steps or (len(train_src) // c.batch_size) * c.data.num_epochs
  if steps <= 0:
    raise ConfigError(f"{len(train_src)} training examples make no full "
                      f"batch of batch_size={c.batch_size}", "batch_size")
  if val_src is not None and len(val_src) < c.batch_size:
    raise ConfigError(f"the {len(val_src)} validation examples make no full "
                      f"batch of batch_size={c.batch_size}", "data.val_path")
  validate_num_steps(c, steps)
  return mesh, train_src, val_src, steps


def make_sources(c: ml_collections.ConfigDict, client: Client):
  """(train, val or None): the client's, or from `data.*`."""
  if client.sources is not None:
    return client.sources(c)
  kw = dict(prompt=c.data.prompt, image_column=c.data.image_column,
            caption_column=c.data.caption_column,
            parquet_cache_mb=c.data.parquet_cache_mb,
            parquet_arrow_dir=c.data.parquet_arrow_dir)
  train = pipeline.make_source(c.data.source, c.data.train_path, **kw)
  val = (pipeline.make_source(c.data.source, c.data.val_path, **kw)
         if c.data.val_path else None)
  return train, val


def build(c: ml_collections.ConfigDict, workdir: str, mesh,
          client: Client) -> Setup:
  """Loads the frozen VLM (from the client's provider or model.checkpoint)."""
  ckpt = (client.frozen_vlm(c, workdir) if client.frozen_vlm is not None
          else c.model.checkpoint)
  vlm_config = store.load_config(ckpt)
  validate_budget(c, vlm_config.num_image_tokens)
  vlm = VLM(vlm_config, DTYPES[c.model.dtype], c.model.remat,
            c.model.scan_unroll or True)
  frozen_sharding = shd.param_shardings(vlm.abstract_params(), mesh,
                                        c.sharding.frozen,
                                        c.sharding.min_fsdp_size)
  frozen = store.load_params(ckpt, vlm_config, sharding=frozen_sharding)
  processor = Processor.from_checkpoint(ckpt, vlm_config)
  return Setup(c, mesh, vlm, frozen, processor, Objective.from_config(c, vlm),
               ckpt)


def make_loader(c, setup: Setup, source, *, shuffle: bool = True,
                num_epochs=None, seed=None):
  """This process's slice of every global batch (`data.sampler`)."""
  return pipeline.make_loader(
      source, setup.processor,
      batch_size=c.batch_size // jax.process_count(),
      max_text_len=c.data.max_text_len,
      seed=c.seed if seed is None else seed, shuffle=shuffle,
      num_epochs=num_epochs,
      worker_count=c.data.worker_count if shuffle else 0,
      process_index=jax.process_index(), process_count=jax.process_count())


# --- state --------------------------------------------------------------------
def init_state(c, setup: Setup, tx):
  """(state, its shardings, its abstract shapes): trainable params,
  optimizer state, step and RNG, laid out on the mesh."""
  obj, mesh = setup.objective, setup.mesh
  init_rng, rng = jax.random.split(jax.random.key(c.seed))

  def init(key):
    params = obj.init(key)
    return {"params": params, "opt_state": tx.init(params),
            "step": jnp.int32(0), "rng": jax.random.key_data(rng)}

  abstract = jax.eval_shape(init, init_rng)
  rule = lambda tree: shd.param_shardings(tree, mesh, c.sharding.trainable,
                                          c.sharding.min_fsdp_size)
  sharding = {"params": rule(abstract["params"]),
              "opt_state": rule(abstract["opt_state"]),
              "step": shd.replicated(mesh), "rng": shd.replicated(mesh)}
  state = jax.jit(init, out_shardings=sharding)(init_rng)
  return state, sharding, abstract


def restore(ckptr: TrainCheckpointer, state, sharding, abstract, iterator):
  """(state, Progress) of the latest complete checkpoint, or as given."""
  start = ckptr.latest_step()
  if not start:
    return state, Progress()
  target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, sharding)
  state, progress = ckptr.restore(start, target, iterator)
  return state, Progress.from_json(start, progress)


# --- jitted functions ---------------------------------------------------------
def make_step_fns(c, setup: Setup, tx, lr_schedule, state_sharding):
  """(step_fn, eval_fn). step_fn(state, frozen, batch) -> (state, metrics)
  donates `state`; one program for every budget in `budgets(c)`: the step
  draws K as a traced int32 scalar."""
  obj, mesh = setup.objective, setup.mesh
  ks = budgets(c)

  def draw_k(rng):
    if len(ks) == 1:
      return ks[0]  # Static.
    return jnp.asarray(ks, jnp.int32)[jax.random.randint(rng, (), 0, len(ks))]

  def train_step(state, frozen, batch):
    rng = jax.random.wrap_key_data(state["rng"])
    rng, step_rng, k_rng = jax.random.split(rng, 3)
    step, k = state["step"], draw_k(k_rng)
    tau = tau_at(c, step)
    (loss, aux), grads = jax.value_and_grad(
        lambda p: obj.train_loss(p, frozen, batch, step_rng, tau, k),
        has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "tau": tau,
               "lr": lr_schedule(step), "k": jnp.asarray(k, jnp.int32),
               "skipped": jnp.sum(~batch["valid"]),
               "truncated": jnp.sum(batch["truncated"]), **aux}
    new_state = {"params": params, "opt_state": opt_state, "step": step + 1,
                 "rng": jax.random.key_data(rng)}
    return new_state, metrics

  batch_sharding = shd.batch_sharding(mesh)
  frozen_sharding = jax.tree_util.tree_map(lambda x: x.sharding, setup.frozen)
  step_fn = jax.jit(train_step,
                    in_shardings=(state_sharding, frozen_sharding,
                                  batch_sharding),
                    out_shardings=(state_sharding, shd.replicated(mesh)),
                    donate_argnums=(0,))
  eval_fn = jax.jit(
      lambda params, frozen, batch: obj.eval_loss(params, frozen, batch,
                                                  c.autoselect.k),
      in_shardings=(state_sharding["params"], frozen_sharding,
                    batch_sharding),
      out_shardings=shd.replicated(mesh))
  return step_fn, eval_fn


# --- the loop -----------------------------------------------------------------
def train(c: ml_collections.ConfigDict, workdir: str,
          client: Client | None = None) -> dict:
  """Trains; returns a summary (final step, losses, paths, state)."""
  validate_workdir(workdir)  # Before anything: a URL's package is missing.
  client = client if client is not None else load_client(c.client)
  maybe_initialize_distributed(c)
  mesh, train_src, val_src, steps = prepare(c, client)
  setup = build(c, workdir, mesh, client)
  iterator = iter(make_loader(c, setup, train_src))
  tx, lr_schedule = make_optimizer(c, steps)
  state, sharding, abstract = init_state(c, setup, tx)
  ckptr = TrainCheckpointer(workdir_path(workdir, "checkpoints"),
                            keep=c.checkpoint.keep,
                            async_save=c.checkpoint.async_save)
  state, progress = restore(ckptr, state, sharding, abstract, iterator)
  step_fn, eval_fn = make_step_fns(c, setup, tx, lr_schedule, sharding)
  writer = MetricWriter(workdir, steps)
  writer.log(f"training AutoSelect K={','.join(map(str, budgets(c)))} for "
             f"{steps} steps (batch {c.batch_size}, {mesh.size} devices, "
             f"{jax.process_count()} processes)"
             + (f"; resuming at step {progress.step}" if progress.step else ""))
  with contextlib.closing(writer):  # A URL workdir's last metrics upload.
    try:
      state = run_steps(c, setup, state, progress, steps, iterator, step_fn,
                        eval_fn, val_src, ckptr, writer)
    finally:
      ckptr.close()
  return finish(workdir, setup, state, progress)


def run_steps(c, setup: Setup, state, progress: Progress, steps: int,
              iterator, step_fn, eval_fn, val_src, ckptr, writer):
  """Trains from `progress.step` to `steps` (or an early stop); returns the
  final state. `progress` is updated in place."""
  window, t0 = [], time.time()
  while progress.step < steps and not progress.stopped_early:
    state, metrics = train_one_step(c, setup, state, iterator, step_fn)
    progress.step += 1
    window.append(metrics)
    if progress.step % c.log_every == 0 or progress.step == steps:
      progress.last_train = log_train(c, writer, progress.step, window, t0)
      window, t0 = [], time.time()
    after_step(c, setup, state, progress, steps, iterator, eval_fn, val_src,
               ckptr, writer)
  return state


def train_one_step(c, setup: Setup, state, iterator, step_fn):
  batch = shd.global_batch(next(iterator), setup.mesh)
  state, metrics = step_fn(state, setup.frozen, batch)
  if c.debug_step_delay:  # Testing aid: widens the window for kill tests.
    time.sleep(c.debug_step_delay)
  return state, metrics


def log_train(c, writer: MetricWriter, step: int, window, t0) -> dict:
  """Means over the window (sums for the counts) -> the writer."""
  m = jax.device_get(window)
  avg = {k: float(np.mean([x[k] for x in m])) for k in m[0]}
  for k in ("skipped", "truncated"):
    avg[k] = float(np.sum([x[k] for x in m]))
  dt = time.time() - t0
  avg.update(steps_per_s=len(m) / dt, examples_per_s=len(m) * c.batch_size / dt)
  writer.write(step, avg)
  return avg


def after_step(c, setup: Setup, state, progress: Progress, steps: int,
               iterator, eval_fn, val_src, ckptr, writer) -> None:
  """Validation and early stopping, then the checkpoint (with `progress`)."""
  step = progress.step
  if val_src is not None and (step % c.eval_every == 0 or step == steps):
    val = evaluate_loss(c, setup, eval_fn, state["params"], val_src)
    writer.write(step, {"loss_topk": val}, prefix="val")
    progress.last_val = val
    if val < progress.best_val - c.early_stopping_min_delta:
      progress.best_val, progress.bad_evals = val, 0
    else:
      progress.bad_evals += 1
    if (c.early_stopping_patience
        and progress.bad_evals >= c.early_stopping_patience):
      writer.log(f"early stopping at step {step}: validation loss has not "
                 f"improved for {progress.bad_evals} evaluations")
      progress.stopped_early = True
  if step % c.checkpoint.every == 0 or step == steps or progress.stopped_early:
    ckptr.save(step, state, iterator, progress.to_json(), force=True)


def finish(workdir: str, setup: Setup, state, progress: Progress) -> dict:
  """Exports the final Scorer (every time a run ends, replacing an older
  export) and returns the run's summary."""
  params = shd.to_host(state["params"])  # Every process: may be a collective.
  scorer_dir = workdir_path(workdir, "scorer")
  export_scorer(scorer_dir, params["scorer"],
                setup.objective.scorer_export_config(setup.ckpt_dir))
  return {"step": progress.step, "state": state, "params": params,
          "setup": setup, "val_loss": progress.last_val,
          "train_metrics": progress.last_train, "scorer_dir": scorer_dir,
          "stopped_early": progress.stopped_early}


def evaluate_loss(c, setup: Setup, eval_fn, params, val_src) -> float:
  """Mean next-token loss on validation data with HARD top-K (the deployed
  path), over `eval_batches` global batches (0: all)."""
  loader = make_loader(c, setup, val_src, shuffle=False, num_epochs=1, seed=0)
  total, count = 0.0, 0.0
  for i, batch in enumerate(loader):
    if c.eval_batches and i >= c.eval_batches:
      break
    s, n = jax.device_get(eval_fn(params, setup.frozen,
                                  shd.global_batch(batch, setup.mesh)))
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)
