"""Pictures of what a token pruner keeps: kept patches and score heat maps.

  draw_selections(image, grid, [Panel("autoselect", kept, scores), ...],
                  "out/cat.png", title="K = 64 of 256")

One column per method. Top row: the image with the kept patches in full
colour, outlined, and the dropped ones greyed and darkened. Bottom row: the
method's per-token scores as a heat map over a faded copy of the image (each
panel normalised to its own min..max, dark purple low, yellow high, the kept
region outlined in white), or "no scores" for a method that has none.
`draw_grid_of_examples` puts several images in one figure (rows = images).

Rendering is Pillow only (no display, no plotting library). The `render_*`
functions return uint8 arrays (so tests can check pixels); the `draw_*`
functions write a PNG atomically (a temporary sibling renamed into place).

Tokens index a grid x grid raster row-major: token i covers patch row
i // grid, column i % grid. Axes: N = grid**2 tokens, K kept.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Panel", "kept_mask", "highlight", "heat_map", "render_selections",
           "render_examples", "draw_selections", "draw_grid_of_examples",
           "save_png"]

DIM = 0.35          # A dropped pixel: DIM * luminance + (1 - DIM) * FLOOR.
FLOOR = 48
OUTLINE = (255, 214, 0)   # Kept-region outline: bright, then a dark 1 px
EDGE = (0, 0, 0)          # line inside it, visible on any colour.
HEAT_ALPHA = 0.7    # Heat colour over the faded image.
# Anchor colours of the viridis palette (low -> high), linearly interpolated.
_PALETTE = np.array([
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37)], np.float64)
_BG, _INK, _MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)


@dataclasses.dataclass(frozen=True)
class Panel:
  """One method's selection on one image.

  method: the column title. kept: (K,) distinct token indices into the
  grid x grid raster. scores: optional (N,) per-token scores (higher = more
  likely kept); None draws "no scores".
  """
  method: str
  kept: np.ndarray
  scores: Optional[np.ndarray] = None


# --- checks -------------------------------------------------------------------
def _check_grid(grid) -> int:
  if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) \
      or grid < 1:
    raise ValueError(f"grid must be a positive int, got {grid!r}")
  return int(grid)


def _check_image(image, grid: int) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} "
                     f"{image.shape}")
  if min(image.shape[:2]) < grid:
    raise ValueError(f"image {image.shape[:2]} is smaller than the "
                     f"{grid} x {grid} token grid")
  return image


def _check_kept(kept, grid: int, name: str = "kept") -> np.ndarray:
  kept = np.asarray(kept)
  n = grid * grid
  if kept.ndim != 1:
    raise ValueError(f"{name}: kept indices must be (K,), got shape "
                     f"{kept.shape}")
  if kept.size and not np.issubdtype(kept.dtype, np.integer):
    raise ValueError(f"{name}: kept indices must be integers, got "
                     f"{kept.dtype}")
  kept = kept.astype(np.int64)
  bad = kept[(kept < 0) | (kept >= n)]
  if bad.size:
    raise ValueError(f"{name}: kept indices {bad[:5].tolist()} are out of "
                     f"range for N = {grid} x {grid} = {n} tokens")
  if np.unique(kept).size != kept.size:
    raise ValueError(f"{name}: kept indices repeat: {kept.tolist()}")
  return kept


def _check_scores(scores, grid: int, name: str = "scores") -> np.ndarray:
  scores = np.asarray(scores, np.float64)
  n = grid * grid
  if scores.ndim != 1:
    raise ValueError(f"{name}: scores must be (N,), got shape {scores.shape}")
  if scores.size != n:
    raise ValueError(f"{name}: {scores.size} scores, but the grid "
                     f"{grid} x {grid} has N = {n} tokens")
  if np.isnan(scores).any():
    raise ValueError(f"{name}: scores contain NaN")
  return scores


def _check_panel(panel: Panel, grid: int) -> Panel:
  if not isinstance(panel, Panel):
    raise TypeError(f"expected a Panel, got {type(panel).__name__}")
  kept = _check_kept(panel.kept, grid, panel.method)
  scores = None if panel.scores is None else _check_scores(
      panel.scores, grid, panel.method)
  return Panel(str(panel.method), kept, scores)


# --- pure array pictures --------------------------------------------------------
def _edges(size: int, grid: int) -> np.ndarray:
  """(grid + 1,) pixel edges of the patch bands along one axis."""
  return (np.arange(grid + 1) * size) // grid


def _upsample(cells: np.ndarray, h: int, w: int) -> np.ndarray:
  """(grid, grid, ...) per-patch values -> (h, w, ...) per pixel."""
  grid = cells.shape[0]
  rows = np.searchsorted(_edges(h, grid), np.arange(h), side="right") - 1
  cols = np.searchsorted(_edges(w, grid), np.arange(w), side="right") - 1
  return cells[rows[:, None], cols[None, :]]


def kept_mask(grid: int, kept) -> np.ndarray:
  """(K,) indices -> (grid, grid) bool, True where a token is kept."""
  grid = _check_grid(grid)
  mask = np.zeros(grid * grid, bool)
  mask[_check_kept(kept, grid)] = True
  return mask.reshape(grid, grid)


def _luminance(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def highlight(image, grid: int, kept) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (H, W, 3): kept patches unchanged, dropped
  patches grey, DIM * luminance + (1 - DIM) * FLOOR (no outlines)."""
  grid = _check_grid(grid)
  image = _check_image(image, grid)
  h, w = image.shape[:2]
  keep = _upsample(kept_mask(grid, kept), h, w)                   # (H, W)
  grey = np.rint(DIM * _luminance(image) + (1 - DIM) * FLOOR).astype(np.uint8)
  return np.where(keep[..., None], image, grey[..., None])


def colorize(values: np.ndarray) -> np.ndarray:
  """Values in [0, 1], any shape (...) -> uint8 (..., 3) palette colours."""
  x = np.clip(values, 0.0, 1.0) * (len(_PALETTE) - 1)
  lo = np.minimum(np.floor(x).astype(int), len(_PALETTE) - 2)
  t = (x - lo)[..., None]
  return np.rint(_PALETTE[lo] * (1 - t) + _PALETTE[lo + 1] * t).astype(np.uint8)


def normalize(scores: np.ndarray) -> np.ndarray:
  """(N,) -> (N,) in [0, 1], min..max over the finite scores (-inf -> 0,
  +inf -> 1); all equal -> 0.5."""
  finite = scores[np.isfinite(scores)]
  if finite.size == 0 or finite.max() == finite.min():
    out = np.full(scores.shape, 0.5)
  else:
    out = (scores - finite.min()) / (finite.max() - finite.min())
  out = np.where(scores == np.inf, 1.0, out)
  return np.where(scores == -np.inf, 0.0, out)


def _faded(image: np.ndarray) -> np.ndarray:
  return 0.5 * _luminance(image) + 127.5                         # (H, W)


def heat_map(image, grid: int, scores) -> np.ndarray:
  """uint8 (H, W, 3), scores (N,) -> uint8 (H, W, 3): each patch coloured by
  its normalised score over a faded grey copy of the image."""
  grid = _check_grid(grid)
  image = _check_image(image, grid)
  s = normalize(_check_scores(scores, grid)).reshape(grid, grid)
  h, w = image.shape[:2]
  colour = _upsample(colorize(s), h, w).astype(np.float64)        # (H, W, 3)
  out = HEAT_ALPHA * colour + (1 - HEAT_ALPHA) * _faded(image)[..., None]
  return np.rint(out).astype(np.uint8)


def _outline(canvas: np.ndarray, grid: int, kept: np.ndarray, colour,
             width: int, edge=None) -> np.ndarray:
  """Draws the border of the kept region (sides of kept patches that face a
  dropped patch or the image edge), inside the kept patches: `width` pixels
  of `colour`, then optionally 1 pixel of `edge` further in."""
  if edge is not None:
    canvas = _outline(canvas, grid, kept, edge, width + 1)
  mask = np.zeros(grid * grid, bool)
  mask[kept] = True
  mask = np.pad(mask.reshape(grid, grid), 1)
  h, w = canvas.shape[:2]
  ys, xs = _edges(h, grid), _edges(w, grid)
  out = canvas.copy()
  for r, c in zip(*np.nonzero(mask[1:-1, 1:-1])):
    y0, y1, x0, x1 = ys[r], ys[r + 1], xs[c], xs[c + 1]
    lw = max(1, min(width, (y1 - y0) // 4, (x1 - x0) // 4))
    if not mask[r, c + 1]:
      out[y0:y0 + lw, x0:x1] = colour
    if not mask[r + 2, c + 1]:
      out[y1 - lw:y1, x0:x1] = colour
    if not mask[r + 1, c]:
      out[y0:y1, x0:x0 + lw] = colour
    if not mask[r + 1, c + 2]:
      out[y0:y1, x1 - lw:x1] = colour
  return out


# --- figures ----------------------------------------------------------------------
def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError, ImportError):  # No FreeType: the bitmap font.
    return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
  if draw.textlength(text, font=font) <= width:
    return text
  while text and draw.textlength(text + "...", font=font) > width:
    text = text[:-1]
  return text + "..."


def _display(image: np.ndarray, size: int) -> np.ndarray:
  """Scales the image so its longer side is `size` (nearest when enlarging,
  so patches stay crisp)."""
  h, w = image.shape[:2]
  scale = size / max(h, w)
  new = (max(1, round(w * scale)), max(1, round(h * scale)))
  if new == (w, h):
    return image
  resample = Image.Resampling.NEAREST if scale > 1 else \
      Image.Resampling.BILINEAR
  return np.asarray(Image.fromarray(image).resize(new, resample=resample))


def _cells(image: np.ndarray, grid: int, panel: Panel, size: int):
  """(selection picture, heat picture or None, its caption)."""
  shown = _display(image, size)
  if min(shown.shape[:2]) < grid:
    raise ValueError(f"panel_size={size} leaves the image {shown.shape[:2]} "
                     f"smaller than the {grid} x {grid} grid")
  lw = max(2, size // 100)
  picked = _outline(highlight(shown, grid, panel.kept), grid, panel.kept,
                    OUTLINE, lw, EDGE)
  if panel.scores is None:
    return picked, None, ""
  heat = _outline(heat_map(shown, grid, panel.scores), grid, panel.kept,
                  (255, 255, 255), 1)
  finite = panel.scores[np.isfinite(panel.scores)]
  caption = (f"scores {finite.min():.3g} .. {finite.max():.3g}"
             if finite.size else "scores not finite")
  return picked, heat, caption


def render_examples(images: Sequence, grid: int,
                    panels: Sequence[Sequence[Panel]], *,
                    title: Optional[str] = None,
                    labels: Optional[Sequence[str]] = None,
                    show_scores: bool = True,
                    panel_size: int = 256) -> np.ndarray:
  """Several images x methods -> uint8 (height, width, 3) figure.

  images: E uint8 (H, W, 3) arrays (sizes may differ). panels: E lists of
  Panels, the same method names in the same order in every list (the
  columns). labels: optional E row labels. show_scores: a heat-map row under
  each image's selection row.
  """
  grid = _check_grid(grid)
  if isinstance(panel_size, bool) or not isinstance(panel_size, int) \
      or panel_size < 16:
    raise ValueError(f"panel_size must be an int >= 16, got {panel_size!r}")
  images = [_check_image(im, grid) for im in images]
  if not images:
    raise ValueError("nothing to draw: no images")
  if len(panels) != len(images):
    raise ValueError(f"{len(images)} images but {len(panels)} panel lists")
  if labels is not None and len(labels) != len(images):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  rows = [[_check_panel(p, grid) for p in row] for row in panels]
  methods = [p.method for p in rows[0]]
  if not methods:
    raise ValueError("nothing to draw: no panels")
  for i, row in enumerate(rows):
    if [p.method for p in row] != methods:
      raise ValueError(f"example {i} has methods {[p.method for p in row]}, "
                       f"example 0 has {methods}: every example needs the "
                       "same methods in the same order")

  n = grid * grid
  pad, size = 10, panel_size
  big, small = _font(max(14, size // 13)), _font(max(12, size // 18))
  line_big, line_small = big.size + 10, small.size + 8
  top = pad + (line_big + 6 if title else 0) + line_big
  label = line_small if labels else 0
  block = label + size + line_small + (size + line_small) * show_scores
  legend = line_small + 4 if show_scores else 0
  width = pad + len(methods) * (size + pad)
  height = top + len(images) * (block + pad) + legend + pad
  canvas = Image.new("RGB", (width, height), _BG)
  draw = ImageDraw.Draw(canvas)

  y = pad
  if title:
    draw.text((pad, y), _fit(draw, title, big, width - 2 * pad), fill=_INK,
              font=big)
    y += line_big + 6
  for j, method in enumerate(methods):
    x = pad + j * (size + pad)
    draw.text((x + size // 2, y + line_big // 2), _fit(draw, method, big, size),
              fill=_INK, font=big, anchor="mm")
  y = top
  for i, (image, row) in enumerate(zip(images, rows)):
    if labels:
      draw.text((pad, y + 2), _fit(draw, str(labels[i]), small, width - 2 * pad),
                fill=_MUTED, font=small)
    y0, y = y, y + label
    for j, panel in enumerate(row):
      x = pad + j * (size + pad)
      picked, heat, caption = _cells(image, grid, panel, size)
      ox, oy = (size - picked.shape[1]) // 2, (size - picked.shape[0]) // 2
      canvas.paste(Image.fromarray(picked), (x + ox, y + oy))
      k = panel.kept.size
      draw.text((x + size // 2, y + size + line_small // 2),
                f"kept {k}/{n} ({100 * k / n:.0f}%)", fill=_INK, font=small,
                anchor="mm")
      if not show_scores:
        continue
      hy = y + size + line_small
      if heat is None:
        draw.rectangle((x, hy, x + size - 1, hy + size - 1), fill=(236, 236, 236))
        draw.text((x + size // 2, hy + size // 2), "no scores", fill=_MUTED,
                  font=big, anchor="mm")
      else:
        canvas.paste(Image.fromarray(heat), (x + ox, hy + oy))
        draw.text((x + size // 2, hy + size + line_small // 2),
                  _fit(draw, caption, small, size), fill=_MUTED, font=small,
                  anchor="mm")
    y = y0 + block + pad
  if show_scores:
    bar_w = min(160, width // 3)
    ramp = colorize(np.linspace(0, 1, bar_w))[None].repeat(small.size, 0)
    draw.text((pad, y + small.size // 2), "score (per panel):  low",
              fill=_MUTED, font=small, anchor="lm")
    x = pad + int(draw.textlength("score (per panel):  low", font=small)) + 6
    canvas.paste(Image.fromarray(ramp), (x, y))
    draw.text((x + bar_w + 6, y + small.size // 2), "high;  white outline = kept",
              fill=_MUTED, font=small, anchor="lm")
  return np.asarray(canvas)


def render_selections(image, grid: int, panels: Sequence[Panel], *,
                      title: Optional[str] = None,
                      panel_size: int = 256) -> np.ndarray:
  """One image, one column per method, selection and heat-map rows -> uint8
  (height, width, 3)."""
  return render_examples([image], grid, [panels], title=title,
                         panel_size=panel_size)


def save_png(picture: np.ndarray, out_path: str) -> str:
  """Writes uint8 (H, W, 3) as a PNG via a temporary sibling and os.replace
  (a crash leaves no half-written file); creates the parent folder."""
  out_path = os.path.abspath(out_path)
  if os.path.isdir(out_path):
    raise IsADirectoryError(f"output {out_path} is a folder; give a file name")
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  tmp = os.path.join(os.path.dirname(out_path), f".{os.path.basename(out_path)}"
                     f".tmp-{os.getpid()}-{os.urandom(4).hex()}")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      Image.fromarray(np.asarray(picture, np.uint8)).save(f, format="PNG")
    os.replace(tmp, out_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return out_path


def draw_selections(image, grid: int, panels: Sequence[Panel], out_path: str,
                    title: Optional[str] = None, *,
                    panel_size: int = 256) -> str:
  """`render_selections` written to `out_path` (PNG); returns the path."""
  return save_png(render_selections(image, grid, panels, title=title,
                                    panel_size=panel_size), out_path)


def draw_grid_of_examples(images: Sequence, grid: int,
                          panels: Sequence[Sequence[Panel]], out_path: str, *,
                          title: Optional[str] = None,
                          labels: Optional[Sequence[str]] = None,
                          show_scores: bool = True,
                          panel_size: int = 192) -> str:
  """`render_examples` (rows = images, columns = methods) written to
  `out_path` (PNG); returns the path."""
  return save_png(render_examples(images, grid, panels, title=title,
                                  labels=labels, show_scores=show_scores,
                                  panel_size=panel_size), out_path)
