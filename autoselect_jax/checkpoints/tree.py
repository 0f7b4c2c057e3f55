"""Helpers shared by the converters: errors, '/'-joined flat trees, shape checks."""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from autoselect_jax.models.config import PaliGemmaConfig


class ConversionError(ValueError):
  """A checkpoint that does not match the model it claims to be."""


def flatten(tree) -> dict:
  """{'a': {'b': x}} -> {'a/b': x} (flax.traverse_util with sep='/')."""
  return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}; refuses a key that is also a subtree."""
  for key in flat:
    parts = key.split("/")
    for i in range(1, len(parts)):
      if "/".join(parts[:i]) in flat:
        raise ConversionError(f"key {key!r} nests under the array "
                              f"{'/'.join(parts[:i])!r}")
  return traverse_util.unflatten_dict(flat, sep="/")


def check_tree(params: dict, config: PaliGemmaConfig) -> None:
  """Raises ConversionError naming every missing, extra or mis-shaped leaf."""
  from autoselect_jax.models.paligemma import VLM  # Heavy import, lazily.
  want = flatten(jax.tree.map(lambda a: a.shape, VLM(config).abstract_params()))
  have = flatten(params)
  problems = []
  for key in sorted(set(want) - set(have)):
    problems.append(f"missing {key} {want[key]}")
  for key in sorted(set(have) - set(want)):
    problems.append(f"unexpected {key} {np.shape(have[key])}")
  for key in sorted(set(want) & set(have)):
    if tuple(np.shape(have[key])) != tuple(want[key]):
      problems.append(f"{key}: shape {tuple(np.shape(have[key]))}, model "
                      f"expects {tuple(want[key])}")
  if problems:
    raise ConversionError("parameters do not match the model config: "
                          + "; ".join(problems[:10])
                          + (f" (+{len(problems) - 10} more)"
                             if len(problems) > 10 else ""))
