"""Training checkpoints (Orbax): trainable params, optimizer state, step, RNG
and every process's data-iterator state, saved together.

Orbax writes each step into a temporary folder and renames it when complete,
so a run killed at any moment restarts from the latest complete step; the
data iterator resumes exactly where that step's batches ended.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain.python as grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class TrainCheckpointer:
  """Saves every `every` steps (and on demand), keeps the last `keep`."""

  def __init__(self, directory: str, *, keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save,
        create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.PyGrainCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator, *,
           force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.PyGrainCheckpointSave(data_iterator))
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator):
    """Restores `state` (matching `abstract_state`'s shapes, dtypes and
    shardings) and sets `data_iterator` in place."""
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.PyGrainCheckpointRestore(data_iterator))
    restored = self.manager.restore(step, args=args)
    logging.info("restored step %d from %s", step, self.directory)
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


SCORER_CONFIG = "scorer_config.json"
SCORER_PARAMS = "scorer.safetensors"


def export_scorer(out_dir: str, scorer_params, scorer_config: dict) -> None:
  """Writes the trained Scorer alone (small: a safetensors file + its config)
  for inference, atomically. Process 0 writes; the others only gather."""
  from safetensors.numpy import save_file
  from autoselect_jax.checkpoints.store import atomic_directory
  from autoselect_jax.checkpoints.tree import flatten
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(scorer_params))
  if jax.process_index() != 0:
    return
  with atomic_directory(out_dir) as tmp:
    save_file(flatten(params), os.path.join(tmp, SCORER_PARAMS))
    with open(os.path.join(tmp, SCORER_CONFIG), "w") as f:
      json.dump(scorer_config, f, indent=2)


def load_scorer(scorer_dir: str) -> tuple[dict, dict]:
  """(scorer params tree, scorer config dict) of an exported Scorer."""
  from autoselect_jax.checkpoints.safetensors_io import SafetensorsFile
  from autoselect_jax.checkpoints.tree import unflatten
  cfg_path = os.path.join(scorer_dir, SCORER_CONFIG)
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path} is missing: not an exported Scorer")
  with open(cfg_path) as f:
    config = json.load(f)
  tensors = SafetensorsFile(os.path.join(scorer_dir, SCORER_PARAMS))
  return unflatten({k: np.array(v) for k, v in tensors.items()}), config
