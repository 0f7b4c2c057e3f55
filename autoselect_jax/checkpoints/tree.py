"""Helpers shared by the converters: errors, tree flattening, shape checks."""

from __future__ import annotations

import jax
import numpy as np

from autoselect_jax.models.config import PaliGemmaConfig


class ConversionError(ValueError):
  """A checkpoint that does not match the model it claims to be."""


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ConversionError(f"key {key!r} nests under an array")
    node[leaf] = v
  return tree


def check_tree(params: dict, config: PaliGemmaConfig) -> None:
  """Raises ConversionError naming every missing, extra or mis-shaped leaf."""
  from autoselect_jax.models.paligemma import VLM  # Heavy import, lazily.
  want = flatten(jax.tree_util.tree_map(lambda a: a.shape,
                                        VLM(config).abstract_params(),
                                        is_leaf=lambda x: hasattr(x, "shape")))
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
