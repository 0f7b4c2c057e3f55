"""Training checkpoints (Orbax): trainable params, optimizer state, step, RNG,
every process's data-iterator state and the loop's own progress (early
stopping's best validation loss and count of evaluations without
improvement), saved together.

Orbax writes each step into a temporary folder and renames it when complete,
so a run killed at any moment restarts from the latest complete step; the
data iterator resumes exactly where that step's batches ended. On GCS
(gs://bucket/run/checkpoints), where there is no rename, Orbax marks a
complete step with a commit file instead; a URL is handed to it as an
`epath.Path` (never through os.path.abspath, which would make it local).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain.python as grain
import orbax.checkpoint as ocp
from etils import epath

from autoselect_jax.checkpoints.store import is_remote


class TrainCheckpointer:
  """Saves every `every` steps (and on demand), keeps the last `keep`."""

  def __init__(self, directory: str, *, keep: int = 3,
               async_save: bool = True):
    """directory: a local folder (made absolute) or a URL."""
    self.directory = (str(directory) if is_remote(directory)
                      else os.path.abspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save,
        create=True)
    self.manager = ocp.CheckpointManager(
        epath.Path(self.directory), options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.PyGrainCheckpointHandler(),
                       "progress": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator, progress: dict, *,
           force: bool = False) -> bool:
    """progress: a JSON-able dict of the loop's own state."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.PyGrainCheckpointSave(data_iterator),
                              progress=ocp.args.JsonSave(progress))
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator
              ) -> tuple[Any, dict]:
    """(state, progress): `state` matches `abstract_state`'s shapes, dtypes
    and shardings; `data_iterator` is set in place."""
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.PyGrainCheckpointRestore(data_iterator),
        progress=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    logging.info("restored step %d from %s", step, self.directory)
    return restored["state"], dict(restored["progress"])

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

