"""Up-front checks of a training config: every impossible value fails here,
before any weights are read or anything is compiled."""

from __future__ import annotations

import glob
import os

import ml_collections


class ConfigError(ValueError):
  pass


def parse_k_choices(value) -> tuple[int, ...]:
  if isinstance(value, (tuple, list)):
    items = list(value)
  else:
    items = [v for v in str(value).replace(" ", "").split(",") if v]
  try:
    return tuple(int(v) for v in items)
  except ValueError:
    raise ConfigError(f"autoselect.k_choices={value!r}: expected integers like "
                      "'32,64,128'") from None


def validate(c: ml_collections.ConfigDict, *, num_devices: int,
             process_count: int = 1) -> None:
  """Raises ConfigError naming the field for any impossible setting."""
  def need(cond, msg):
    if not cond:
      raise ConfigError(msg)

  a = c.autoselect
  need(isinstance(a.k, int) and a.k > 0, f"autoselect.k={a.k!r} must be a "
       "positive integer")
  for k in parse_k_choices(a.k_choices):
    need(k > 0, f"autoselect.k_choices holds {k}; budgets must be positive")
  need(a.noise_scale in ("unit", "std"),
       f"autoselect.noise_scale={a.noise_scale!r}: use 'unit' or 'std'")
  need(a.position_policy in ("original", "packed"),
       f"autoselect.position_policy={a.position_policy!r}: use 'original' or "
       "'packed'")
  need(a.scorer_layers >= 1, "autoselect.scorer_layers must be >= 1")
  need(c.tau.start > 0 and c.tau.end > 0, f"tau.start={c.tau.start} and "
       f"tau.end={c.tau.end} must be positive")
  need(c.tau.steps >= 0, "tau.steps must be >= 0")
  need(c.model.scan_unroll >= 0,
       f"model.scan_unroll={c.model.scan_unroll}: use 0 (fully) or >= 1")
  need(c.model.dtype in ("float32", "bfloat16"),
       f"model.dtype={c.model.dtype!r}: use 'float32' or 'bfloat16'")
  need(c.optim.lr > 0, f"optim.lr={c.optim.lr} must be positive")
  need(c.optim.grad_clip_norm >= 0, "optim.grad_clip_norm must be >= 0")
  need(c.batch_size > 0, f"batch_size={c.batch_size} must be positive")
  need(c.batch_size % num_devices == 0,
       f"batch_size={c.batch_size} is not divisible by the {num_devices} "
       "devices")
  need(c.batch_size % process_count == 0,
       f"batch_size={c.batch_size} is not divisible by the {process_count} "
       "processes")
  need(c.num_steps >= 0, "num_steps must be >= 0 (0 = epochs)")
  need(c.data.num_epochs >= 1, "data.num_epochs must be >= 1")
  need(c.data.max_text_len >= 2, "data.max_text_len must be >= 2")
  need(c.log_every >= 1 and c.eval_every >= 1,
       "log_every and eval_every must be >= 1")
  need(c.checkpoint.every >= 1 and c.checkpoint.keep >= 1,
       "checkpoint.every and checkpoint.keep must be >= 1")
  need(c.sharding.frozen in ("replicate", "fsdp") and
       c.sharding.trainable in ("replicate", "fsdp"),
       "sharding.frozen / sharding.trainable must be 'replicate' or 'fsdp'")
  need(c.distributed.initialize in ("auto", "yes", "no"),
       "distributed.initialize must be 'auto', 'yes' or 'no'")
  need(c.data.source in ("jsonl", "parquet", "synthetic"),
       f"data.source={c.data.source!r}: use 'jsonl', 'parquet' or 'synthetic'")
  if not c.demo.enabled:
    need(c.model.checkpoint, "model.checkpoint is not set: pass "
         "--config.model.checkpoint=DIR (a folder written by `python -m "
         "autoselect_jax.convert`), or run the self-contained demo: "
         "--config configs/demo.py")
    need(os.path.isdir(c.model.checkpoint),
         f"model.checkpoint={c.model.checkpoint} does not exist")
    need(c.data.source != "synthetic", "data.source='synthetic' is the demo's; "
         "use --config configs/demo.py")
    need(c.data.train_path, "data.train_path is not set: pass "
         "--config.data.train_path=FILE (JSONL manifest or Parquet glob), or "
         "run the self-contained demo: --config configs/demo.py")
    for field in ("train_path", "val_path"):
      path = c.data[field]
      if path:
        found = (glob.glob(path) if c.data.source == "parquet"
                 else os.path.isfile(path))
        need(found, f"data.{field}={path} does not exist")


def validate_budget(c: ml_collections.ConfigDict, num_visual_tokens: int):
  ks = (c.autoselect.k,) + parse_k_choices(c.autoselect.k_choices)
  for k in ks:
    if k > num_visual_tokens:
      raise ConfigError(f"budget K={k} exceeds the model's "
                        f"{num_visual_tokens} visual tokens")
