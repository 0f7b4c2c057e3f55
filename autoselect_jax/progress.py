"""A dependency-free progress bar with rate and ETA, for long phases.

  bar = Progress(total=500, desc="eval")
  bar.update(64)   # after each batch
  bar.close()

Writes to stderr (or `stream`) with carriage returns on a terminal, one line
per `every_s` seconds otherwise (logs, CI), so output stays readable either
way. Time comes from `clock` (tests pass a fake one).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO


def format_seconds(s: float) -> str:
  s = max(0, int(round(s)))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
  """done/total, percent, items/s and ETA over the items done in this run."""

  def __init__(self, total: int, desc: str = "", *, initial: int = 0,
               unit: str = "ex", stream: Optional[TextIO] = None,
               every_s: float = 10.0, width: int = 24,
               clock: Callable[[], float] = time.monotonic):
    if total < 0 or not 0 <= initial <= max(total, 0):
      raise ValueError(f"need 0 <= initial={initial} <= total={total}")
    self.total, self.desc, self.unit = total, desc, unit
    self.done = self._start_done = initial
    self.stream = stream if stream is not None else sys.stderr
    self.every_s, self.width, self.clock = every_s, width, clock
    self._t0 = self._last = clock()
    self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self._closed = False

  def line(self) -> str:
    elapsed = self.clock() - self._t0
    new = self.done - self._start_done
    rate = new / elapsed if elapsed > 0 else 0.0
    frac = self.done / self.total if self.total else 1.0
    fill = int(round(frac * self.width))
    eta = ((self.total - self.done) / rate if rate > 0
           else float("nan"))
    eta_s = format_seconds(eta) if eta == eta else "?"
    head = f"{self.desc}: " if self.desc else ""
    return (f"{head}[{'#' * fill}{'.' * (self.width - fill)}] "
            f"{self.done}/{self.total} {100 * frac:5.1f}% "
            f"{rate:.1f} {self.unit}/s elapsed {format_seconds(elapsed)} "
            f"ETA {eta_s}")

  def update(self, n: int = 1) -> None:
    self.done = min(self.total, self.done + n)
    now = self.clock()
    if self._tty:
      self.stream.write("\r" + self.line())
      self.stream.flush()
    elif now - self._last >= self.every_s or self.done == self.total:
      self.stream.write(self.line() + "\n")
      self.stream.flush()
      self._last = now

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      if self._tty:
        self.stream.write("\n")
        self.stream.flush()
