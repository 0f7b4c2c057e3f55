"""Global batches independent of the process count (`data.sampler`)."""

from __future__ import annotations

import grain.python as grain
import pytest

from autoselect_jax.data.sampler import GlobalBatchSampler


def _local_keys(sampler, process_index, process_count, limit):
  """What the DataLoader of that process reads: indices p, p + P, ..."""
  keys, i = [], process_index
  while i < len(sampler) and len(keys) < limit:
    keys.append(sampler[i].record_key)
    i += process_count
  return keys


@pytest.mark.parametrize("num_epochs", [None, 2])
def test_processes_split_every_global_batch_of_one_order(num_epochs):
  n, g = 21, 8
  order = grain.IndexSampler(n, shuffle=True, seed=3, num_epochs=num_epochs)
  total = 40 if num_epochs is None else n * num_epochs // g * g  # 40.
  want = [order[i].record_key for i in range(total)]
  one = GlobalBatchSampler(n, global_batch=g, shuffle=True, seed=3,
                           num_epochs=num_epochs)
  assert [one[i].record_key for i in range(total)] == want
  for p_count in (2, 4):
    local = [_local_keys(GlobalBatchSampler(
        n, global_batch=g, process_index=p, process_count=p_count,
        shuffle=True, seed=3, num_epochs=num_epochs), p, p_count,
        limit=total) for p in range(p_count)]
    lb = g // p_count
    if num_epochs:  # Every process gets the same number of records.
      assert [len(x) for x in local] == [total // p_count] * p_count
    joined = [k for b in range(total // g) for p in range(p_count)
              for k in local[p][b * lb:(b + 1) * lb]]
    assert joined == want
  if num_epochs:  # Whole global batches only: 42 records make 5 of 8.
    assert len(one) == 40
    with pytest.raises(IndexError):
      one[40]


def test_bad_arguments():
  with pytest.raises(ValueError, match="does not divide over 3 processes"):
    GlobalBatchSampler(10, global_batch=8, process_count=3)
  with pytest.raises(ValueError, match="process_index=2"):
    GlobalBatchSampler(10, global_batch=8, process_index=2, process_count=2)
