"""Up-front checks of a training config: every impossible value fails here,
naming its field, before any weights are read, any client hook provides a
VLM, or anything is compiled."""

from __future__ import annotations

import glob
import math
import numbers
import os

import ml_collections

from autoselect_jax.checkpoints.store import is_remote, remote_problem
from autoselect_jax.method.gate import GATES
from autoselect_jax.method.modules import DENOISER_ATTENTIONS


class ConfigError(ValueError):
  """An impossible config value; `field` is its dotted key (e.g. 'tau.steps')."""

  def __init__(self, message: str, field: str = ""):
    super().__init__(message)
    self.field = field


def parse_k_choices(value) -> tuple[int, ...]:
  if isinstance(value, (tuple, list)):
    items = list(value)
  else:
    items = [v for v in str(value).replace(" ", "").split(",") if v]
  try:
    return tuple(int(v) for v in items)
  except ValueError:
    raise ConfigError(f"autoselect.k_choices={value!r}: expected integers like "
                      "'32,64,128'", "autoselect.k_choices") from None


def _get(c, field: str):
  for part in field.split("."):
    c = c[part]
  return c


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(v))


class Checker:
  """need(cond, field, msg) raises ConfigError(f"{field}={value!r} {msg}")."""

  def __init__(self, c):
    self.c = c

  def need(self, cond: bool, field: str, msg: str) -> None:
    if not cond:
      raise ConfigError(f"{field}={_get(self.c, field)!r} {msg}", field)

  def int_at_least(self, field: str, lo: int) -> None:
    v = _get(self.c, field)
    self.need(_is_int(v) and v >= lo, field, f"must be an integer >= {lo}")

  def real_in(self, field: str, lo: float, hi: float = math.inf, *,
              lo_open: bool = False, hi_open: bool = False) -> None:
    v = _get(self.c, field)
    ok = _is_real(v) and (v > lo if lo_open else v >= lo) and (
        v < hi if hi_open else v <= hi)
    lo_s = f"{'(' if lo_open else '['}{lo:g}"
    hi_s = f"{hi:g}{')' if hi_open else ']'}" if hi < math.inf else "inf)"
    self.need(ok, field, f"must be a finite number in {lo_s}, {hi_s}")

  def one_of(self, field: str, options) -> None:
    self.need(_get(self.c, field) in options, field,
              "must be one of " + ", ".join(repr(o) for o in options))


def validate_workdir(workdir: str) -> None:
  """A workdir is a local folder or a URL (gs://bucket/run) whose filesystem
  package is installed; else a ConfigError naming the path and the package,
  raised before a run reads weights or data (not at its first save)."""
  if not workdir:
    raise ConfigError("the workdir is not set (--workdir DIR or gs://...)",
                      "workdir")
  problem = remote_problem(str(workdir)) if is_remote(workdir) else None
  if problem:
    raise ConfigError(f"--workdir {problem}", "workdir")


def _local(ch: Checker, field: str) -> None:
  """Inputs are read from local disk only: a URL here gets that said, not
  'does not exist'."""
  ch.need(not is_remote(_get(ch.c, field)), field, "is a URL: this input is "
          "read from local disk (copy it there first); only --workdir may "
          "be a URL")


def validate(c: ml_collections.ConfigDict, *, num_devices: int,
             process_count: int = 1, client=None) -> None:
  """Raises ConfigError naming the field for any impossible setting.

  `client` (training.client.Client): fields it provides (the frozen VLM, the
  data) are not required here; its own `validate` hook runs last.
  """
  ch = Checker(c)
  _check_method(ch, c)
  _check_schedules(ch, c)
  _check_loop(ch, c)
  _check_layout(ch, c, num_devices, process_count)
  if client is None or client.frozen_vlm is None:
    _check_checkpoint(ch, c)
  if client is None or client.sources is None:
    _check_data_paths(ch, c)
  if client is not None and client.validate is not None:
    client.validate(c)


def _check_method(ch: Checker, c) -> None:
  ch.int_at_least("autoselect.k", 1)
  for k in parse_k_choices(c.autoselect.k_choices):
    ch.need(k > 0, "autoselect.k_choices", f"holds {k}; budgets must be "
            "positive")
  ch.one_of("autoselect.noise_scale", ("unit", "std"))
  ch.one_of("autoselect.position_policy", ("original", "packed"))
  ch.one_of("autoselect.gate", GATES)
  ch.need(isinstance(c.autoselect.noise, bool), "autoselect.noise",
          "must be True or False")
  ch.one_of("autoselect.denoiser", DENOISER_ATTENTIONS + ("none",))
  ch.int_at_least("autoselect.scorer_layers", 1)
  ch.int_at_least("autoselect.scorer_width", 0)
  ch.int_at_least("autoselect.scorer_heads", 1)
  width, heads = c.autoselect.scorer_width, c.autoselect.scorer_heads
  ch.need(width == 0 or width % heads == 0, "autoselect.scorer_width",
          f"is not divisible by autoselect.scorer_heads={heads}")
  ch.int_at_least("autoselect.scorer_mlp_ratio", 1)
  ch.int_at_least("autoselect.denoiser_heads", 1)
  ch.one_of("model.dtype", ("float32", "bfloat16"))
  ch.int_at_least("model.scan_unroll", 0)


def _check_schedules(ch: Checker, c) -> None:
  """tau, learning rate and warm-up (warm-up vs the run's length: also in
  `validate_num_steps` once an epoch-based length is known)."""
  ch.real_in("tau.start", 0.0, lo_open=True)
  ch.real_in("tau.end", 0.0, lo_open=True)
  ch.int_at_least("tau.steps", 1)
  ch.real_in("optim.lr", 0.0, lo_open=True)
  ch.int_at_least("optim.warmup_steps", 0)
  ch.real_in("optim.weight_decay", 0.0)
  ch.real_in("optim.b1", 0.0, 1.0, hi_open=True)
  ch.real_in("optim.b2", 0.0, 1.0, hi_open=True)
  ch.real_in("optim.grad_clip_norm", 0.0)
  ch.int_at_least("num_steps", 0)
  if _is_int(c.num_steps) and c.num_steps > 0:
    validate_num_steps(c, c.num_steps)


def validate_num_steps(c: ml_collections.ConfigDict, steps: int) -> None:
  """The checks that need the run's length (num_steps, or epochs of data)."""
  if c.optim.warmup_steps >= steps:
    raise ConfigError(f"optim.warmup_steps={c.optim.warmup_steps} must be "
                      f"smaller than the run's {steps} steps (num_steps)",
                      "optim.warmup_steps")


def _check_loop(ch: Checker, c) -> None:
  ch.int_at_least("batch_size", 1)
  ch.int_at_least("data.num_epochs", 1)
  ch.int_at_least("data.max_text_len", 2)
  ch.int_at_least("data.worker_count", 0)
  ch.real_in("data.parquet_cache_mb", 0.0)
  for field in ("log_every", "eval_every", "checkpoint.every",
                "checkpoint.keep"):
    ch.int_at_least(field, 1)
  ch.int_at_least("eval_batches", 0)
  ch.int_at_least("early_stopping_patience", 0)
  ch.real_in("early_stopping_min_delta", 0.0)
  ch.real_in("debug_step_delay", 0.0)


def _check_layout(ch: Checker, c, num_devices: int, process_count: int):
  ch.one_of("sharding.frozen", ("replicate", "fsdp"))
  ch.one_of("sharding.trainable", ("replicate", "fsdp"))
  ch.int_at_least("sharding.min_fsdp_size", 0)
  ch.one_of("distributed.initialize", ("auto", "yes", "no"))
  ch.need(c.batch_size % num_devices == 0, "batch_size",
          f"is not divisible by the {num_devices} devices")
  ch.need(c.batch_size % process_count == 0, "batch_size",
          f"is not divisible by the {process_count} processes")


def _check_checkpoint(ch: Checker, c) -> None:
  ch.need(c.model.checkpoint, "model.checkpoint", "is not set: pass "
          "--config.model.checkpoint=DIR (a folder written by `python -m "
          "autoselect_jax.convert`), or a config whose client provides the "
          "frozen VLM")
  _local(ch, "model.checkpoint")
  ch.need(os.path.isdir(c.model.checkpoint), "model.checkpoint",
          "does not exist")


def _check_data_paths(ch: Checker, c) -> None:
  ch.one_of("data.source", ("jsonl", "parquet"))
  ch.need(c.data.train_path, "data.train_path", "is not set: pass "
          "--config.data.train_path=FILE (a JSONL manifest or a Parquet "
          "glob), or a config whose client provides the data")
  for field in ("train_path", "val_path"):
    path = c.data[field]
    if path:
      _local(ch, f"data.{field}")
      found = (glob.glob(path) if c.data.source == "parquet"
               else os.path.isfile(path))
      ch.need(found, f"data.{field}", "does not exist")


def validate_budget(c: ml_collections.ConfigDict, num_visual_tokens: int):
  ks = (c.autoselect.k,) + parse_k_choices(c.autoselect.k_choices)
  for k in ks:
    if k > num_visual_tokens:
      field = ("autoselect.k" if k == c.autoselect.k
               else "autoselect.k_choices")
      raise ConfigError(f"budget K={k} exceeds the model's "
                        f"{num_visual_tokens} visual tokens ({field})", field)
