"""Trains AutoSelect on a frozen VLM.

  python -m autoselect_jax.train --config configs/demo.py --workdir /tmp/demo
  python -m autoselect_jax.train --config configs/paligemma.py --workdir DIR \\
      --config.model.checkpoint=CKPT --config.data.train_path=TRAIN.jsonl

Any config field can be overridden with --config.FIELD=VALUE. The run resumes
from the latest complete checkpoint in --workdir automatically; --workdir may
be a cloud URL (gs://bucket/run, with gcsfs installed), as on a TPU pod where
every worker runs this same command. A config's
`client` module (configs/demo.py's is `autoselect_jax.demo.run`) may provide
the frozen VLM, the data and an after-training report
(`autoselect_jax.training.client`).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with get_config() (configs/*.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder, local or a URL "
                               "(gs://bucket/run, needs gcsfs): checkpoints, "
                               "metrics, the exported scorer.")
DEMO_HINT = ("without weights or data, try the self-contained demo: "
             "--config configs/demo.py")


def _fail(message: str) -> None:
  print(f"train: error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl's parsing, but an unknown --config.KEY is a one-line error (exit 2)
  naming the key and the closest valid ones, not a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    _fail(_unknown_key_message(argv) or f"bad --config override: {e}")


def _overrides(argv) -> list[str]:
  keys = []
  for arg in argv[1:]:
    if arg.startswith("--config."):
      keys.append(arg[len("--config."):].split("=", 1)[0])
  return keys


def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _flat_keys(node, prefix="") -> list[str]:
  out = []
  for k, v in node.items():
    key = f"{prefix}{k}"
    out += _flat_keys(v, key + ".") if hasattr(v, "items") else [key]
  return out


def _closest(key: str, valid: list[str]) -> list[str]:
  """Valid keys like `key`, or with a leaf like its leaf (nosuch.lr ->
  optim.lr), best first."""
  close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
  leaf = key.rsplit(".", 1)[-1]
  by_leaf = [v for v in valid if v not in close and difflib.get_close_matches(
      leaf, [v.rsplit(".", 1)[-1]], cutoff=0.75)]
  return (close + by_leaf)[:3]


def _unknown_key_message(argv) -> str | None:
  """'unknown config key K; closest: ...' for the first override that the
  config file does not have (None if that cannot be told)."""
  path = _config_path(argv)
  if not path:
    return None
  path = path if os.path.exists(path) else path.split(":", 1)[0]
  try:
    spec = importlib.util.spec_from_file_location("_train_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception:  # The config itself is broken: let absl's message stand.
    return None
  valid = _flat_keys(config)
  for key in _overrides(argv):
    node = config
    for part in key.split("."):
      if not (hasattr(node, "items") and part in node):
        close = _closest(key, valid)
        hint = (f"; closest valid keys: {', '.join(close)}" if close
                else f"; valid keys: {', '.join(valid)}")
        return f"unknown config key --config.{key}{hint}"
      node = node[part]
  return None


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo.py")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  logging.set_verbosity(logging.WARNING)
  from autoselect_jax.training import loop  # Heavy imports after flag parsing.
  from autoselect_jax.training.client import load_client
  from autoselect_jax.training.config import ConfigError
  config = _CONFIG.value
  try:
    client = load_client(config.client)
    result = loop.train(config, _WORKDIR.value, client)
  except (ConfigError, FileNotFoundError) as e:
    hint = ""
    if (getattr(e, "field", "") in ("model.checkpoint", "data.train_path")
        and not config.client):
      hint = f" ({DEMO_HINT})"
    _fail(f"{e}{hint}")
  import jax
  import numpy as np
  checksum = sum(float(np.abs(x).astype(np.float64).sum())
                 for x in jax.tree_util.tree_leaves(result["params"]))
  loss = result["train_metrics"].get("loss")
  last = ("no step ran in this call" if loss is None
          else f"last train loss {loss:.6f}")
  print(f"process {jax.process_index()}/{jax.process_count()}: finished at "
        f"step {result['step']}, {last}, trainable |params| sum "
        f"{checksum:.6f}", flush=True)
  if client.report is not None:
    client.report(config, _WORKDIR.value, result)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
