"""The embedded demo's synthetic "shapes" captioning task (no download).

A 64x64 RGB image holds a textured background (two random sinusoid gratings
plus pixel noise) and 1 to 4 small shapes (circle, square, triangle; six
colours; 7-8 px), at most one per image quadrant. Each shape is centred on a
random patch cell of its quadrant (8x8 px cells -> an 8x8 grid = 64 visual
tokens) with +-0.5 px jitter, so one object is about one visual token: a model
that sees the right few tokens can caption the image, random tokens cannot.

With `max_distractors` > 0 (the harder variant) the image also holds up to
that many achromatic shapes (white, black) in cells of their own, which the
caption never mentions: they stand out as much as the objects, so salience
(feature norm, diversity, attention) no longer tells which tokens matter.

Caption: the objects in quadrant order (top left, top right, bottom left,
bottom right), each as "colour shape quadrant", joined by "and", e.g.
"red triangle top left and blue circle bottom right".

Every example is a pure function of (seed, index): `make_example(seed, i)`
regenerates it anywhere (random access, as Grain needs). `object_cells` gives
the token indices (row * grid + col) that hold objects, for the oracle.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Iterable, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # name -> RGB; saturated, far from the greyish background.
    "red": (225, 30, 30),
    "green": (30, 190, 45),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 30),
    "purple": (165, 40, 205),
    "cyan": (30, 205, 215),
}
# Distractor colours: never named, as salient against the background as the
# objects' colours.
DISTRACTOR_COLOURS = {"white": (245, 245, 245), "black": (15, 15, 15)}
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
PROMPT = "caption en"
# Every word a caption or the prompt can hold (the demo tokenizer's corpus).
WORDS = (tuple(COLOURS) + SHAPES + ("top", "bottom", "left", "right", "and")
         + tuple(PROMPT.split()))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Geometry of the task; the defaults are the demo's."""
  image_size: int = 64
  patch_size: int = 8
  min_objects: int = 1
  max_objects: int = 4
  min_size: float = 7.0   # Shape extent in px (diameter / side / base).
  max_size: float = 8.0
  jitter: float = 0.5     # Max offset of a shape's centre from its cell's.
  noise_std: float = 10.0
  min_distractors: int = 0  # Unnamed achromatic shapes, any free cell.
  max_distractors: int = 0

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid ** 2

  def validate(self) -> "TaskSpec":
    if self.image_size % self.patch_size or self.grid % 2:
      raise ValueError(f"TaskSpec: image_size={self.image_size} must be an "
                       f"even number of patches of {self.patch_size} px")
    if not 1 <= self.min_objects <= self.max_objects <= len(QUADRANTS):
      raise ValueError(f"TaskSpec: need 1 <= min_objects={self.min_objects} "
                       f"<= max_objects={self.max_objects} <= 4")
    if not 0 < self.min_size <= self.max_size:
      raise ValueError("TaskSpec: need 0 < min_size <= max_size")
    if not 0 <= self.min_distractors <= self.max_distractors <= (
        self.num_tokens - self.max_objects):
      raise ValueError(
          f"TaskSpec: need 0 <= min_distractors={self.min_distractors} <= "
          f"max_distractors={self.max_distractors} <= the "
          f"{self.num_tokens - self.max_objects} cells objects leave free")
    return self


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: str
  colour: str
  quadrant: int             # Index into QUADRANTS.
  cell: tuple[int, int]     # (row, col) of the patch cell it is centred on.
  centre: tuple[float, float]  # (y, x) in px, pixel centres at i + 0.5.
  size: float


@dataclasses.dataclass(frozen=True)
class Scene:
  """All random choices of one example; `render` turns it into pixels."""
  spec: TaskSpec
  gratings: tuple[tuple[float, ...], ...]  # (fy, fx, phase, r, g, b) each.
  base: tuple[float, float, float]         # Background mean colour.
  noise_seed: int
  objects: tuple[Obj, ...]                 # In quadrant order.
  distractors: tuple[Obj, ...] = ()        # Unnamed; quadrant -1.


@dataclasses.dataclass(frozen=True)
class Example:
  image: np.ndarray         # uint8 (S, S, 3)
  caption: str
  object_cells: np.ndarray  # int32 (num_objects,), token indices, ascending.
  index: int = -1
  distractor_cells: np.ndarray = dataclasses.field(  # int32, ascending.
      default_factory=lambda: np.zeros(0, np.int32))


def _rng(seed: int, index: int) -> np.random.Generator:
  if seed < 0 or index < 0:
    raise ValueError(f"seed={seed} and index={index} must be >= 0")
  return np.random.default_rng([seed, index])


def sample_scene(seed: int, index: int, spec: TaskSpec = TaskSpec()) -> Scene:
  """The random choices of example `index` of the stream `seed`."""
  spec.validate()
  rng = _rng(seed, index)
  gratings = []
  for _ in range(2):
    freq = rng.uniform(1.0, 6.0) / spec.image_size  # Cycles per px.
    angle = rng.uniform(0, np.pi)
    tint = rng.uniform(0.6, 1.0, 3) * rng.uniform(15, 35)
    gratings.append((freq * np.sin(angle), freq * np.cos(angle),
                     rng.uniform(0, 2 * np.pi), *tint))
  base = tuple(rng.uniform(90, 160) + rng.uniform(-15, 15, 3))
  num = int(rng.integers(spec.min_objects, spec.max_objects + 1))
  quads = np.sort(rng.choice(len(QUADRANTS), num, replace=False))
  half = spec.grid // 2
  objects = []
  for q in quads:
    row = (q // 2) * half + int(rng.integers(half))
    col = (q % 2) * half + int(rng.integers(half))
    objects.append(_place(rng, spec, row, col, COLOURS, int(q)))
  noise_seed = int(rng.integers(2 ** 31))
  # Drawn last, so scenes without distractors are those of earlier versions.
  distractors = []
  if spec.max_distractors:
    num = int(rng.integers(spec.min_distractors, spec.max_distractors + 1))
    taken = {o.cell[0] * spec.grid + o.cell[1] for o in objects}
    free = [c for c in range(spec.num_tokens) if c not in taken]
    for c in np.sort(rng.choice(free, num, replace=False)):
      row, col = divmod(int(c), spec.grid)
      distractors.append(_place(rng, spec, row, col, DISTRACTOR_COLOURS, -1))
  return Scene(spec, tuple(tuple(float(v) for v in g) for g in gratings),
               tuple(float(v) for v in base), noise_seed, tuple(objects),
               tuple(distractors))


def _place(rng: np.random.Generator, spec: TaskSpec, row: int, col: int,
           colours: dict, quadrant: int) -> Obj:
  """A shape centred on patch cell (row, col), with jitter, a random shape,
  a colour of `colours` and a size (drawn in that order)."""
  dy, dx = rng.uniform(-spec.jitter, spec.jitter, 2)
  p = spec.patch_size
  return Obj(shape=SHAPES[rng.integers(len(SHAPES))],
             colour=list(colours)[rng.integers(len(colours))],
             quadrant=quadrant, cell=(row, col),
             centre=((row + 0.5) * p + dy, (col + 0.5) * p + dx),
             size=float(rng.uniform(spec.min_size, spec.max_size)))


def shape_mask(obj: Obj, image_size: int) -> np.ndarray:
  """bool (S, S): pixels whose centres lie inside the shape."""
  y, x = _pixel_centres(image_size)
  cy, cx = obj.centre
  r = obj.size / 2
  if obj.shape == "circle":
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r
  if obj.shape == "square":
    return (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r)
  if obj.shape == "triangle":  # Apex up, base = height = size.
    t = (y - (cy - r)) / obj.size  # 0 at the apex, 1 at the base.
    return (t >= 0) & (t <= 1) & (np.abs(x - cx) <= r * t)
  raise ValueError(f"unknown shape {obj.shape!r}")


@functools.lru_cache(maxsize=4)
def _pixel_centres(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(S, 1) and (1, S) float32 coordinates of pixel centres (read-only)."""
  c = np.arange(image_size, dtype=np.float32) + 0.5
  y, x = c[:, None], c[None, :]
  y.flags.writeable = x.flags.writeable = False
  return y, x


def render(scene: Scene, with_objects: bool = True) -> np.ndarray:
  """uint8 (S, S, 3). `with_objects=False`: the same background, noise
  included, without objects or distractors."""
  s = scene.spec.image_size
  y, x = _pixel_centres(s)
  img = np.empty((s, s, 3), np.float32)
  img[:] = scene.base
  for fy, fx, phase, *tint in scene.gratings:
    # sin(a + b) = sin a cos b + cos a sin b: two outer products, no (S, S) trig.
    a, b = 2 * np.pi * fy * y, 2 * np.pi * fx * x + phase
    wave = np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b)
    img += wave[..., None] * np.asarray(tint, np.float32)
  if with_objects:
    for obj in scene.distractors:
      img[shape_mask(obj, s)] = DISTRACTOR_COLOURS[obj.colour]
    for obj in scene.objects:
      img[shape_mask(obj, s)] = COLOURS[obj.colour]
  img += np.random.default_rng(scene.noise_seed).standard_normal(
      (s, s, 3), np.float32) * np.float32(scene.spec.noise_std)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def caption(scene: Scene) -> str:
  return " and ".join(f"{o.colour} {o.shape} {QUADRANTS[o.quadrant]}"
                      for o in scene.objects)


def object_cells(scene: Scene) -> np.ndarray:
  """int32 (num_objects,): token index row * grid + col of each object, ascending."""
  return _cells(scene.objects, scene.spec.grid)


def distractor_cells(scene: Scene) -> np.ndarray:
  """int32 (num_distractors,): token indices of the distractors, ascending."""
  return _cells(scene.distractors, scene.spec.grid)


def _cells(objs: Sequence[Obj], grid: int) -> np.ndarray:
  return np.sort(np.asarray([r * grid + c for r, c in (o.cell for o in objs)],
                            np.int32))


def make_example(seed: int, index: int, spec: TaskSpec = TaskSpec()) -> Example:
  scene = sample_scene(seed, index, spec)
  return Example(render(scene), caption(scene), object_cells(scene), index,
                 distractor_cells(scene))


def make_examples(seed: int, indices: Iterable[int],
                  spec: TaskSpec = TaskSpec()) -> list[Example]:
  return [make_example(seed, int(i), spec) for i in indices]


def object_mask(examples: Sequence[Example], num_tokens: int) -> np.ndarray:
  """bool (B, N): True on the tokens that hold an object."""
  out = np.zeros((len(examples), num_tokens), bool)
  for i, e in enumerate(examples):
    if e.object_cells.size and e.object_cells.max() >= num_tokens:
      raise ValueError(f"example {i} has object cells beyond {num_tokens} "
                       "tokens: task and model grids differ")
    out[i, e.object_cells] = True
  return out


def write_split(out_dir: str, seed: int, indices: Iterable[int],
                spec: TaskSpec = TaskSpec(), name: str = "data") -> str:
  """Writes examples as PNGs plus `out_dir/{name}.jsonl` manifest
  ({"image": absolute path, "caption": ..., "object_cells": [...]}); returns
  the manifest's path."""
  from PIL import Image
  img_dir = os.path.join(out_dir, name)
  os.makedirs(img_dir, exist_ok=True)
  manifest = os.path.join(out_dir, f"{name}.jsonl")
  tmp = manifest + ".tmp"
  with open(tmp, "w") as f:
    for i in indices:
      ex = make_example(seed, int(i), spec)
      path = os.path.abspath(os.path.join(img_dir, f"{int(i):08d}.png"))
      Image.fromarray(ex.image).save(path)
      f.write(json.dumps({"image": path, "caption": ex.caption,
                          "object_cells": ex.object_cells.tolist()}) + "\n")
  os.replace(tmp, manifest)
  return manifest


class SyntheticSource:
  """Examples [start, start + n) of the stream `seed`, rendered on access, as
  a Grain random-access source (so it shuffles and shards like files)."""

  def __init__(self, seed: int, start: int, n: int, prompt: str = PROMPT,
               spec: TaskSpec = TaskSpec()):
    if seed < 0 or start < 0 or n < 1:
      raise ValueError(f"SyntheticSource: need seed={seed} >= 0, "
                       f"start={start} >= 0 and n={n} >= 1")
    self.seed, self.start, self.n, self.prompt = seed, start, n, prompt
    self.spec = spec.validate()

  def __len__(self) -> int:
    return self.n

  def __repr__(self) -> str:  # Part of the checkpointed iterator state.
    extra = ("" if self.spec == TaskSpec() else f", spec={self.spec}")
    return (f"SyntheticSource(seed={self.seed}, start={self.start}, "
            f"n={self.n}{extra})")

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.n:
      raise IndexError(i)
    ex = make_example(self.seed, self.start + i, self.spec)
    return {"image": ex.image, "prefix": self.prompt, "suffix": ex.caption}
