"""A trained Scorer on its own: `scorer.safetensors` + `scorer_config.json`.

Small (tens of MB for PaliGemma-3B) and enough for inference: the frozen VLM
comes from its own checkpoint folder, the Scorer from this one. Written by
`autoselect_jax.train` every time a run ends (so it holds the final params);
read by `autoselect_jax.generate --scorer DIR` and `inference.Pipeline`.

scorer_config.json: {"format": "autoselect_jax.scorer", "version": 1,
"scorer": {Scorer fields}, "position_policy": ..., "vlm": {model config}}.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from autoselect_jax.checkpoints.store import atomic_directory
from autoselect_jax.checkpoints.tree import ConversionError, flatten, unflatten

SCORER_CONFIG = "scorer_config.json"
SCORER_PARAMS = "scorer.safetensors"
FORMAT = "autoselect_jax.scorer"


def export_scorer(out_dir: str, scorer_params, scorer_config: dict) -> None:
  """Writes the Scorer's params and config to `out_dir`, replacing an earlier
  export only once the new one is complete (nothing partial is ever there).

  scorer_params: numpy or fully addressable jax arrays (multi-host sharded
  params: gather them first, `training.sharding.to_host`). Process 0 writes.
  """
  from safetensors.numpy import save_file
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(scorer_params))
  if jax.process_index() != 0:
    return
  with atomic_directory(out_dir, replace=True) as tmp:
    save_file(flatten(params), os.path.join(tmp, SCORER_PARAMS))
    with open(os.path.join(tmp, SCORER_CONFIG), "w") as f:
      json.dump(scorer_config, f, indent=2)


def load_scorer(scorer_dir: str) -> tuple[dict, dict]:
  """(params tree of numpy arrays, config dict) of an exported Scorer."""
  from autoselect_jax.checkpoints.safetensors_io import SafetensorsFile
  if not os.path.isdir(scorer_dir):
    raise FileNotFoundError(f"scorer folder {scorer_dir} does not exist")
  cfg_path = os.path.join(scorer_dir, SCORER_CONFIG)
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path} is missing: {scorer_dir} is not an "
                            "exported Scorer (autoselect_jax.train writes "
                            "WORKDIR/scorer)")
  with open(cfg_path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
  if config.get("format") != FORMAT or "scorer" not in config:
    raise ValueError(f"{cfg_path} is not a {FORMAT} config (format="
                     f"{config.get('format')!r})")
  tensors = SafetensorsFile(os.path.join(scorer_dir, SCORER_PARAMS))
  return unflatten({k: np.array(v) for k, v in tensors.items()}), config


def check_scorer_params(params, abstract) -> None:
  """Raises ConversionError naming every missing, extra or mis-shaped key."""
  got = {k: v.shape for k, v in flatten(params).items()}
  want = {k: tuple(v.shape) for k, v in flatten(abstract).items()}
  problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(got))]
  problems += [f"unexpected {k} {got[k]}" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: checkpoint {got[k]} vs model {want[k]}"
               for k in sorted(set(got) & set(want)) if got[k] != want[k]]
  if problems:
    raise ConversionError("Scorer params do not match its config: "
                          + "; ".join(problems[:10]))
