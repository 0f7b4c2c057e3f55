"""Accuracy-vs-K plots (figures/plots.py): a readable PNG written atomically,
lines where the table says, clear errors."""

import os

import numpy as np
import pytest
from PIL import Image

from autoselect_jax.figures import plots

TABLE = {"full": {4: 0.9, 8: 0.9, 16: 0.9},
         "AutoSelect": {4: 0.5, 8: 0.8, 16: 0.88},
         "random": {4: 0.1, 8: 0.2, 16: 0.4}}


def test_writes_a_png_with_every_line(tmp_path):
  out = plots.plot_accuracy_vs_k(TABLE, str(tmp_path / "a" / "acc.png"),
                                 spread={"AutoSelect": {4: 0.05, 8: 0.02}},
                                 n=64)
  assert out == str(tmp_path / "a" / "acc.png")
  assert os.listdir(tmp_path / "a") == ["acc.png"]  # No temporary left.
  with Image.open(out) as im:
    pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
  # AutoSelect's red and random's grey are both drawn.
  for rgb in ((214, 39, 40), (127, 127, 127)):
    assert (np.abs(pixels - rgb).sum(1) < 30).sum() > 50, rgb


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match="empty table"):
    plots.plot_accuracy_vs_k({}, str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="no method besides 'full'"):
    plots.plot_accuracy_vs_k({"full": {4: 1.0}}, str(tmp_path / "x.png"))
  assert not os.path.exists(tmp_path / "x.png")
