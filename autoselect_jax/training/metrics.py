"""Metrics to stdout (with a progress bar), a JSONL file and TensorBoard.

Only process 0 writes; the others keep quiet.

A local workdir gets WORKDIR/metrics.jsonl and WORKDIR/tensorboard/ written
in place, line by line. A URL workdir (gs://bucket/run, through etils.epath)
cannot be appended to: cloud objects are written whole. There both files are
written to a local staging folder and each changed one is uploaded whole
(`Mirror`) at most every `sync_every_s` seconds and when the writer closes;
a reader sees either the previous upload or the new one, never half a file.
A resumed run first downloads the existing metrics.jsonl, so it appends as
it does locally.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Mapping

import jax
from etils import epath

from autoselect_jax.checkpoints.store import is_remote

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class Mirror:
  """A local staging folder whose files are uploaded to `remote` (a URL
  folder), each whole and only when changed since its last upload."""

  def __init__(self, remote: str, every_s: float):
    self.remote = epath.Path(remote)
    self.local = tempfile.mkdtemp(prefix="autoselect-metrics-")
    self.every_s = every_s
    self._last_sync = time.monotonic()
    self._uploaded: dict[str, tuple[int, int]] = {}

  def download(self, name: str) -> None:
    """Copies `remote/name` (if there) into the staging folder, marking it
    as uploaded as it is."""
    source = self.remote / name
    if source.exists():
      local = os.path.join(self.local, name)
      with open(local, "wb") as f:
        f.write(source.read_bytes())
      self._uploaded[name] = _signature(local)

  def maybe_sync(self) -> None:
    """Uploads when `every_s` has passed; an upload error is logged, not
    raised (the run goes on; the next sync or `close` tries again)."""
    if time.monotonic() - self._last_sync < self.every_s:
      return
    try:
      self.sync()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("metrics upload to %s failed (retried later): %s",
                      self.remote, e)

  def sync(self) -> None:
    """Uploads every staged file that changed since its last upload."""
    self._last_sync = time.monotonic()
    for folder, _, files in os.walk(self.local):
      for name in sorted(files):
        local = os.path.join(folder, name)
        rel = os.path.relpath(local, self.local)
        sig = _signature(local)
        if self._uploaded.get(rel) != sig:
          with open(local, "rb") as f:
            (self.remote / rel).write_bytes(f.read())
          self._uploaded[rel] = sig

  def close(self) -> None:
    """A last upload (errors raised), then the staging folder goes."""
    try:
      self.sync()
    finally:
      shutil.rmtree(self.local, ignore_errors=True)


def _signature(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


class MetricWriter:
  """Writes WORKDIR/metrics.jsonl and WORKDIR/tensorboard (see the module
  docstring for URL workdirs; `sync_every_s` sets their upload interval)."""

  def __init__(self, workdir: str, total_steps: int,
               enabled: bool | None = None, *, sync_every_s: float = 60.0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total = total_steps
    self._start = time.time()
    self._jsonl = self._tb = self._mirror = None
    if self.enabled:
      folder = self._staging(workdir, sync_every_s)
      self._jsonl = open(os.path.join(folder, METRICS_FILE), "a")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(folder, TENSORBOARD_DIR))
      except ImportError:  # TensorBoard output is optional.
        self._tb = None

  def _staging(self, workdir: str, sync_every_s: float) -> str:
    """The local folder the files are written to: the workdir itself, or a
    `Mirror`'s staging folder for a URL workdir."""
    if not is_remote(workdir):
      os.makedirs(workdir, exist_ok=True)
      return workdir
    self._mirror = Mirror(workdir, sync_every_s)
    self._mirror.download(METRICS_FILE)
    return self._mirror.local

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
    if self._mirror is not None:
      self._mirror.maybe_sync()
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
    """Closes the files; a URL workdir gets its last upload here."""
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._mirror is not None:
      self._mirror.close()
      self._mirror = None


def _fmt(v: float) -> str:
  if v == 0 or 1e-3 <= abs(v) < 1e5:
    return f"{v:.4g}"
  return f"{v:.3e}"
