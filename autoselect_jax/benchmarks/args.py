"""Argument types shared by the benchmark command lines."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
  """ "64,128,192" -> [64, 128, 192]; an argparse type (at least one)."""
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers, got {text!r}") from None
  if not values:
    raise argparse.ArgumentTypeError("expected at least one integer")
  return values
