"""Metrics to stdout (with a progress bar), a JSONL file and TensorBoard.

Only process 0 writes; the others keep quiet.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import jax


class MetricWriter:

  def __init__(self, workdir: str, total_steps: int, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total = total_steps
    self._start = time.time()
    self._jsonl = self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # TensorBoard output is optional.
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train"):
    if not self.enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **metrics})
                      + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{prefix}/{k}", v, step)
      self._tb.flush()
    print(self._line(step, metrics, prefix), flush=True)

  def _line(self, step, metrics, prefix):
    frac = min(step / max(self.total, 1), 1.0)
    bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
    elapsed = time.time() - self._start
    body = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
    return f"[{bar}] {step}/{self.total} {elapsed:6.0f}s {prefix}: {body}"

  def log(self, text: str):
    if self.enabled:
      print(text, file=sys.stdout, flush=True)

  def close(self):
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _fmt(v: float) -> str:
  if v == 0 or 1e-3 <= abs(v) < 1e5:
    return f"{v:.4g}"
  return f"{v:.3e}"
