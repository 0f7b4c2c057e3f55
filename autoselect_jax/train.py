"""Trains AutoSelect on a frozen VLM.

  python -m autoselect_jax.train --config configs/demo.py --workdir /tmp/demo
  python -m autoselect_jax.train --config configs/paligemma.py --workdir DIR \\
      --config.model.checkpoint=CKPT --config.data.train_path=TRAIN.jsonl

Any config field can be overridden with --config.FIELD=VALUE. The run resumes
from the latest complete checkpoint in --workdir automatically.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with get_config() (configs/*.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder: checkpoints, "
                               "metrics, the exported scorer.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo.py")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  logging.set_verbosity(logging.WARNING)
  from autoselect_jax.training import loop  # Heavy imports after flag parsing.
  from autoselect_jax.training.config import ConfigError
  config = _CONFIG.value
  try:
    result = loop.train(config, _WORKDIR.value)
  except (ConfigError, FileNotFoundError) as e:
    print(f"train: error: {e}", file=sys.stderr)
    sys.exit(2)
  import jax
  import numpy as np
  params = jax.device_get(result["state"]["params"])
  checksum = sum(float(np.abs(x).astype(np.float64).sum())
                 for x in jax.tree_util.tree_leaves(params))
  print(f"process {jax.process_index()}/{jax.process_count()}: finished at "
        f"step {result['step']}, last train loss "
        f"{result['train_metrics'].get('loss', float('nan')):.6f}, "
        f"trainable |params| sum {checksum:.6f}", flush=True)
  if config.demo.enabled:
    from autoselect_jax.demo import run as demo_run
    demo_run.report(config, _WORKDIR.value, result)


if __name__ == "__main__":
  app.run(main)
