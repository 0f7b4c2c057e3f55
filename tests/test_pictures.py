"""Pictures of token selections (`figures.pictures`): kept pixels, dimmed
drops, heat maps, the PNG file, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from autoselect_jax.figures import pictures as P


def _bright(h, w, seed=0):
  return np.random.default_rng(seed).integers(80, 256, (h, w, 3), np.uint8)


def _patch_coloured(grid, px):
  """A (grid * px) square image whose patch i is one colour, distinct from
  every other patch and from any grey."""
  im = np.zeros((grid * px, grid * px, 3), np.uint8)
  for i in range(grid * grid):
    r, c = divmod(i, grid)
    im[r * px:(r + 1) * px, c * px:(c + 1) * px] = (10 + 14 * i, 250 - 9 * i, 5)
  return im


def test_kept_mask_is_row_major():
  mask = P.kept_mask(3, [1, 5])
  want = np.zeros((3, 3), bool)
  want[0, 1] = want[1, 2] = True
  np.testing.assert_array_equal(mask, want)


@pytest.mark.parametrize("h, w", [(32, 32), (30, 34)])
def test_highlight_keeps_kept_pixels_and_dims_dropped(h, w):
  grid, kept = 4, [0, 5, 10, 15, 3]
  image = _bright(h, w)
  out = P.highlight(image, grid, kept)
  assert out.shape == image.shape and out.dtype == np.uint8
  ys, xs = (np.arange(grid + 1) * h) // grid, (np.arange(grid + 1) * w) // grid
  lum = image.astype(np.float64) @ [0.299, 0.587, 0.114]
  for i in range(grid * grid):
    r, c = divmod(i, grid)
    win = np.s_[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
    if i in kept:
      np.testing.assert_array_equal(out[win], image[win])
    else:
      grey = out[win].astype(np.float64)
      assert (grey[..., 0] == grey[..., 1]).all()
      assert (grey[..., 1] == grey[..., 2]).all()
      np.testing.assert_allclose(grey[..., 0],
                                 P.DIM * lum[win] + (1 - P.DIM) * P.FLOOR,
                                 atol=0.5)
      assert (grey[..., 0] < lum[win]).all()   # Dimmer than it was.


def test_heat_map_orders_colours_by_score():
  grid = 2
  image = np.full((8, 8, 3), 128, np.uint8)
  heat = P.heat_map(image, grid, [0.0, 1.0, 2.0, 3.0])
  corners = [heat[0, 0], heat[0, 7], heat[7, 0], heat[7, 7]]
  # Viridis: green rises with the score; each patch is one colour.
  greens = [int(c[1]) for c in corners]
  assert greens == sorted(greens) and len(set(greens)) == 4
  np.testing.assert_array_equal(heat[:4, :4], np.broadcast_to(heat[0, 0],
                                                              (4, 4, 3)))
  # Constant scores: every patch the middle colour; infinities are extremes.
  flat = P.heat_map(image, grid, [5.0] * 4)
  assert (flat == flat[0, 0]).all()
  inf = P.heat_map(image, grid, [-np.inf, 0.0, 1.0, np.inf])
  np.testing.assert_array_equal(inf[0, 0], heat[0, 0])
  np.testing.assert_array_equal(inf[7, 7], heat[7, 7])


def test_rendered_figure_shows_kept_patches_and_hides_dropped():
  grid, px = 4, 16
  image = _patch_coloured(grid, px)
  kept = np.array([1, 6, 7, 12])
  fig = P.render_examples([image], grid, [[P.Panel("m", kept)]],
                          show_scores=False, panel_size=grid * px * 2)
  flat = fig.reshape(-1, 3)
  colours = {tuple(c): n for c, n in zip(*np.unique(flat, axis=0,
                                                    return_counts=True))}
  for i in range(grid * grid):
    colour = tuple(image[(i // grid) * px, (i % grid) * px])
    if i in kept:   # At 2x, most of the 32 x 32 patch survives the outline.
      assert colours.get(colour, 0) > 16 * 16, i
    else:
      assert colour not in colours, i
  assert tuple(P.OUTLINE) in colours


def test_scores_row_and_more_examples_add_height():
  grid = 4
  image = _bright(32, 32, seed=3)
  a = P.Panel("a", [0, 1, 2, 3], np.arange(16.0))
  b = P.Panel("b", [12, 13, 14, 15])
  fig = P.render_selections(image, grid, [a, b], title="t", panel_size=64)
  assert fig.dtype == np.uint8 and fig.shape[2] == 3
  one = P.render_examples([image], grid, [[a, b]], show_scores=False,
                          panel_size=64)
  assert fig.shape[0] > one.shape[0] + 64 and fig.shape[1] == one.shape[1]
  two = P.render_examples([image, image], grid, [[a, b], [a, b]],
                          labels=["x", "y"], panel_size=64)
  assert two.shape[0] > 2 * fig.shape[0] - 100


def test_draw_writes_a_readable_png_atomically(tmp_path):
  grid = 4
  image = _bright(40, 40, seed=1)
  panels = [P.Panel("autoselect", [0, 3, 9], np.linspace(0, 1, 16)),
            P.Panel("random", [2, 4, 8])]
  out = tmp_path / "new" / "deeper" / "fig.png"
  assert P.draw_selections(image, grid, panels, str(out), title="k=3") == str(
      out)
  with Image.open(out) as f:
    assert f.format == "PNG" and f.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(f), P.render_selections(
        image, grid, panels, title="k=3"))
  assert os.listdir(out.parent) == ["fig.png"]   # No temporary left behind.
  grid_png = tmp_path / "grid.png"
  P.draw_grid_of_examples([image, image[::-1]], grid, [panels, panels],
                          str(grid_png), labels=["one", "two"])
  with Image.open(grid_png) as f:
    assert f.size[0] > 2 * 192
  with pytest.raises(IsADirectoryError):
    P.draw_selections(image, grid, panels, str(tmp_path))


@pytest.mark.parametrize("panel, match", [
    (P.Panel("m", [0, 16]), r"\[16\] are out of range for N = 4 x 4 = 16"),
    (P.Panel("m", [-1]), "out of range"),
    (P.Panel("m", [2, 2]), "repeat"),
    (P.Panel("m", [[0, 1]]), r"must be \(K,\)"),
    (P.Panel("m", [0.5]), "must be integers"),
    (P.Panel("m", [0], np.zeros(9)), r"9 scores, but the grid 4 x 4 has N = 16"),
    (P.Panel("m", [0], np.zeros((4, 4))), r"scores must be \(N,\)"),
    (P.Panel("m", [0], np.full(16, np.nan)), "NaN"),
])
def test_bad_panels_name_the_problem(panel, match):
  with pytest.raises(ValueError, match=match):
    P.render_selections(_bright(16, 16), 4, [panel])


def test_bad_figures_name_the_problem():
  image, ok = _bright(16, 16), P.Panel("m", [0])
  with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
    P.render_selections(image.astype(np.float32), 4, [ok])
  with pytest.raises(ValueError, match="smaller than the 4 x 4"):
    P.render_selections(_bright(3, 16), 4, [ok])
  with pytest.raises(ValueError, match="grid must be a positive int"):
    P.render_selections(image, 0, [ok])
  with pytest.raises(ValueError, match="no panels"):
    P.render_selections(image, 4, [])
  with pytest.raises(ValueError, match="same methods in the same order"):
    P.render_examples([image, image], 4, [[ok], [P.Panel("x", [0])]])
  with pytest.raises(ValueError, match="2 images but 1 panel lists"):
    P.render_examples([image, image], 4, [[ok]])
  with pytest.raises(ValueError, match="1 labels"):
    P.render_examples([image, image], 4, [[ok], [ok]], labels=["a"])
  with pytest.raises(TypeError, match="expected a Panel"):
    P.render_selections(image, 4, [("m", [0])])
