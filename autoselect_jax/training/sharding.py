"""Device mesh, parameter sharding rules and global batches.

The mesh has two axes, `data` and `fsdp`. Batches are sharded over both
(every device holds a slice of the batch). Parameters are either replicated
or FSDP-sharded: each array is split along its largest dimension that the
`fsdp` axis size divides (small arrays, below `min_fsdp_size` elements, stay
replicated). On one host every device is local; on many hosts each process
feeds its own slice of the batch with `jax.make_array_from_process_local_data`,
and `to_host` gathers arrays sharded over processes back to every host.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """Mesh of shape (data, fsdp); -1 means 'all remaining devices'."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("mesh: at most one of data, fsdp may be -1")
  if data == -1:
    data = n // max(fsdp, 1)
  if fsdp == -1:
    fsdp = n // max(data, 1)
  if data <= 0 or fsdp <= 0 or data * fsdp != n:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the "
                     f"{n} devices")
  return Mesh(np.array(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape, fsdp_size: int, min_fsdp_size: int = 2 ** 14) -> P:
  """FSDP rule: shard the largest dimension that `fsdp_size` divides."""
  if fsdp_size == 1 or int(np.prod(shape)) < min_fsdp_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def param_shardings(tree, mesh: Mesh, mode: str, min_fsdp_size: int = 2 ** 14):
  """`mode`: 'replicate' or 'fsdp'. Returns a matching tree of NamedShardings."""
  if mode not in ("replicate", "fsdp"):
    raise ValueError(f"sharding mode must be 'replicate' or 'fsdp', got {mode!r}")
  size = mesh.shape["fsdp"] if mode == "fsdp" else 1
  return jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, param_spec(np.shape(x), size,
                                               min_fsdp_size)), tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch -> global arrays sharded over the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def to_host(tree):
  """numpy copies of the whole (global) arrays, also where they are sharded
  over several processes (FSDP on many hosts), where `jax.device_get` fails.

  A collective when any array spans processes: every process must call it.
  """
  from jax.experimental import multihost_utils

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree_util.tree_map(one, tree)
