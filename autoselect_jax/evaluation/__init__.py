"""Benchmark evaluation: loaders and official metrics (`benchmarks/`), the
batched, resumable runner, re-scoring and the retention report.

  python -m autoselect_jax.evaluate run|score|report ...
"""
