"""A trained Scorer on its own: `scorer.safetensors` + `scorer_config.json`.

Small (tens of MB for PaliGemma-3B) and enough for inference: the frozen VLM
comes from its own checkpoint folder, the Scorer from this one. Written by
`autoselect_jax.train` every time a run ends (so it holds the final params);
read by `autoselect_jax.generate --scorer DIR` and `inference.Pipeline`.
DIR may be a local folder or a URL (gs://bucket/run/scorer, through
etils.epath); `export_scorer` says how each is kept consistent.

scorer_config.json: {"format": "autoselect_jax.scorer", "version": 1,
"scorer": {Scorer fields}, "position_policy": ..., "vlm": {model config}}.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from etils import epath

from autoselect_jax.checkpoints.store import atomic_directory, is_remote
from autoselect_jax.checkpoints.tree import ConversionError, flatten, unflatten

SCORER_CONFIG = "scorer_config.json"
SCORER_PARAMS = "scorer.safetensors"
FORMAT = "autoselect_jax.scorer"


def export_scorer(out_dir: str, scorer_params, scorer_config: dict) -> None:
  """Writes the Scorer's params and config to `out_dir`, replacing an earlier
  export; no reader ever takes a partial export for a complete one.

  A local folder is written to a temporary sibling that is renamed into
  place once complete (`store.atomic_directory`: the old export stays whole
  until then). Cloud storage has no folder rename, so a URL folder is
  written in the order readers rely on (`load_scorer` reads the config
  first): the old config is deleted, the params are uploaded, and the
  config comes last (each object is uploaded whole). An interrupted export
  leaves no config, which `load_scorer` reports as missing, never old
  params with a new config or the reverse.

  scorer_params: numpy or fully addressable jax arrays (multi-host sharded
  params: gather them first, `training.sharding.to_host`). Process 0 writes.
  """
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(scorer_params))
  if jax.process_index() != 0:
    return
  if is_remote(out_dir):
    _export_to_url(epath.Path(out_dir), flatten(params), scorer_config)
    return
  from safetensors.numpy import save_file
  with atomic_directory(out_dir, replace=True) as tmp:
    save_file(flatten(params), os.path.join(tmp, SCORER_PARAMS))
    with open(os.path.join(tmp, SCORER_CONFIG), "w") as f:
      json.dump(scorer_config, f, indent=2)


def _export_to_url(out: epath.Path, tensors: dict, scorer_config: dict):
  """Config deleted, params uploaded, config uploaded last (see
  `export_scorer`). No mkdir: object stores need no folders."""
  from safetensors.numpy import save
  config = out / SCORER_CONFIG
  if config.exists():
    config.unlink()
  (out / SCORER_PARAMS).write_bytes(save(tensors))
  config.write_text(json.dumps(scorer_config, indent=2))


def load_scorer(scorer_dir: str) -> tuple[dict, dict]:
  """(params tree of numpy arrays, config dict) of an exported Scorer, from
  a local folder or a URL (the config is read first: see `export_scorer`)."""
  folder = epath.Path(scorer_dir)
  if not folder.is_dir():
    raise FileNotFoundError(f"scorer folder {scorer_dir} does not exist")
  cfg_path = os.path.join(scorer_dir, SCORER_CONFIG)
  if not (folder / SCORER_CONFIG).exists():
    raise FileNotFoundError(f"{cfg_path} is missing: {scorer_dir} is not an "
                            "exported Scorer (autoselect_jax.train writes "
                            "WORKDIR/scorer)")
  try:
    config = json.loads((folder / SCORER_CONFIG).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
  if config.get("format") != FORMAT or "scorer" not in config:
    raise ValueError(f"{cfg_path} is not a {FORMAT} config (format="
                     f"{config.get('format')!r})")
  tensors = _read_tensors(folder / SCORER_PARAMS, remote=is_remote(scorer_dir))
  return unflatten({k: np.array(v) for k, v in tensors.items()}), config


def _read_tensors(path: epath.Path, *, remote: bool):
  """name -> array: a local file memory-mapped, a URL's object downloaded."""
  from safetensors import SafetensorError
  from autoselect_jax.checkpoints.safetensors_io import SafetensorsFile
  if not remote:
    return SafetensorsFile(os.fspath(path))
  from safetensors.numpy import load
  try:
    return load(path.read_bytes())
  except SafetensorError as e:
    raise ValueError(f"{path}: not a readable safetensors file: {e}") from None


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
