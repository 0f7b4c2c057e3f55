"""Global batches that do not depend on the number of processes.

Grain's sharded `IndexSampler` gives each process a contiguous block of the
records, so a global batch of 2 processes holds other examples than one
process would use. `GlobalBatchSampler` draws one global order (the
unsharded `IndexSampler`'s: the same for any process count) and gives
process p of P the p-th slice of every global batch. Global batch b is then
positions [b * G, (b + 1) * G) of that order on any number of processes,
and 1 process sees exactly the plain `IndexSampler`'s stream.
"""

from __future__ import annotations

import grain.python as grain


class GlobalBatchSampler:
  """A Grain sampler: DataLoader index j of process p -> a record of the
  global order. Only whole global batches are served (so every process
  yields the same number of batches, also for finite epochs)."""

  def __init__(self, num_records: int, *, global_batch: int,
               process_index: int = 0, process_count: int = 1,
               shuffle: bool = True, seed: int = 0,
               num_epochs: int | None = None):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} does not divide over "
                       f"{process_count} processes")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in "
                       f"[0, {process_count})")
    self._order = grain.IndexSampler(num_records, shuffle=shuffle,
                                     num_epochs=num_epochs, seed=seed)
    self.global_batch, self.local_batch = (global_batch,
                                           global_batch // process_count)
    self.process_index, self.process_count = process_index, process_count
    # The DataLoader asks for indices p, p + P, p + 2P, ... of this shard.
    self._shard_options = grain.ShardOptions(process_index, process_count,
                                             drop_remainder=True)
    self._num_batches = (None if num_epochs is None
                         else num_records * num_epochs // global_batch)
    self._repr = (f"GlobalBatchSampler(num_records={num_records}, "
                  f"global_batch={global_batch}, shuffle={shuffle}, "
                  f"seed={seed}, num_epochs={num_epochs}, "
                  f"shard={process_index}/{process_count})")

  def __len__(self) -> int:
    if self._num_batches is None:
      return len(self._order)
    return self._num_batches * self.global_batch

  def __repr__(self) -> str:  # Part of the checkpointed iterator state.
    return self._repr

  def position(self, index: int) -> int:
    """Position in the global order of DataLoader index `index`."""
    p, m = index % self.process_count, index // self.process_count
    b, r = divmod(m, self.local_batch)
    return b * self.global_batch + p * self.local_batch + r

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0 or index >= len(self):
      raise IndexError(f"index {index} is out of [0, {len(self)})")
    meta = self._order[self.position(index)]
    return grain.RecordMetadata(index=index, record_key=meta.record_key,
                                rng=meta.rng)
