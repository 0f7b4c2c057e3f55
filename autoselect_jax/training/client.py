"""Clients: a module that supplies parts of a training run.

`config.client` names a Python module (empty: none). The training system
imports it by name and calls whichever of these functions it defines:

  validate(c)                  extra config checks (raise ConfigError); runs
                               with the other checks, before anything else
  frozen_vlm(c, workdir) -> str
                               the frozen VLM's checkpoint folder (replaces
                               model.checkpoint); may build it
  sources(c) -> (train, val)   Grain random-access sources, val may be None
                               (replaces data.source / train_path / val_path)
  report(c, workdir, result)   runs after training on every process, with
                               `loop.train`'s summary

Without a client the VLM comes from `model.checkpoint` and the data from
`data.*`. The training system knows no client by name.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

from autoselect_jax.training.config import ConfigError

HOOKS = ("validate", "frozen_vlm", "sources", "report")


@dataclasses.dataclass(frozen=True)
class Client:
  name: str = ""
  validate: Optional[Callable] = None
  frozen_vlm: Optional[Callable] = None
  sources: Optional[Callable] = None
  report: Optional[Callable] = None


def load_client(name: str) -> Client:
  """The hooks of module `name` ('' -> no client)."""
  if not name:
    return Client()
  try:
    module = importlib.import_module(name)
  except ImportError as e:
    raise ConfigError(f"client={name!r} cannot be imported: {e}",
                      "client") from None
  hooks = {h: getattr(module, h, None) for h in HOOKS}
  bad = [h for h, f in hooks.items() if f is not None and not callable(f)]
  if bad or not any(hooks.values()):
    raise ConfigError(f"client={name!r} must define functions among "
                      f"{', '.join(HOOKS)}", "client")
  return Client(name, **hooks)
