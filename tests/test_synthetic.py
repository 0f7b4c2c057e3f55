"""The shapes task: determinism, layout, caption grammar, object cells."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from autoselect_jax.demo import synthetic

SPEC = synthetic.TaskSpec()
INDICES = range(60)


@pytest.fixture(scope="module")
def scenes():
  return [synthetic.sample_scene(3, i) for i in INDICES]


def test_deterministic_per_seed_and_index():
  a = synthetic.make_example(7, 12)
  b = synthetic.make_example(7, 12)
  np.testing.assert_array_equal(a.image, b.image)
  assert a.caption == b.caption
  np.testing.assert_array_equal(a.object_cells, b.object_cells)
  # Random access: example 12 does not depend on the ones generated before.
  synthetic.make_examples(7, range(5))
  np.testing.assert_array_equal(synthetic.make_example(7, 12).image, a.image)
  # Other index / other seed: other example.
  assert not np.array_equal(synthetic.make_example(7, 13).image, a.image)
  assert not np.array_equal(synthetic.make_example(8, 12).image, a.image)


def test_image_format():
  ex = synthetic.make_example(0, 0)
  assert ex.image.dtype == np.uint8 and ex.image.shape == (64, 64, 3)
  assert ex.image.std() > 5  # Textured, not a flat colour.


def test_layout_one_object_per_quadrant_at_most(scenes):
  counts = set()
  for scene in scenes:
    quads = [o.quadrant for o in scene.objects]
    assert quads == sorted(set(quads))  # Distinct, in quadrant order.
    counts.add(len(quads))
    half = SPEC.grid // 2
    for o in scene.objects:
      row, col = o.cell
      assert (row // half) * 2 + col // half == o.quadrant
      cy, cx = o.centre
      assert abs(cy - (row + 0.5) * SPEC.patch_size) <= SPEC.jitter
      assert abs(cx - (col + 0.5) * SPEC.patch_size) <= SPEC.jitter
      assert SPEC.min_size <= o.size <= SPEC.max_size
  assert counts == {1, 2, 3, 4}


_OBJ = (f"({'|'.join(synthetic.COLOURS)}) ({'|'.join(synthetic.SHAPES)}) "
        f"({'|'.join(synthetic.QUADRANTS)})")


def test_caption_grammar_and_quadrant_order(scenes):
  for scene in scenes:
    cap = synthetic.caption(scene)
    parts = cap.split(" and ")
    assert len(parts) == len(scene.objects)
    quads = []
    for part, obj in zip(parts, scene.objects):
      m = re.fullmatch(_OBJ, part)
      assert m, part
      assert m.groups() == (obj.colour, obj.shape,
                            synthetic.QUADRANTS[obj.quadrant])
      quads.append(synthetic.QUADRANTS.index(m.group(3)))
    assert quads == sorted(quads)
    assert set(cap.split()) <= set(synthetic.WORDS)


def test_object_cells_hold_the_objects(scenes):
  s, p = SPEC.image_size, SPEC.patch_size
  for scene in scenes[:30]:
    full, bg = synthetic.render(scene), synthetic.render(scene, False)
    changed = np.any(full != bg, axis=-1)  # (S, S)
    cells = synthetic.object_cells(scene)
    assert list(cells) == sorted(cells)
    # Every listed cell holds many changed pixels (most of a 7-8 px shape).
    per_cell = changed.reshape(s // p, p, s // p, p).sum((1, 3)).reshape(-1)
    for c in cells:
      assert per_cell[c] >= 20, (c, per_cell[c])
    # Changes elsewhere: only the +-0.5 px jitter's one-pixel spill.
    inside = np.zeros(s // p * (s // p), bool)
    inside[cells] = True
    inside = np.kron(inside.reshape(s // p, s // p), np.ones((p, p), bool))
    grown = inside.copy()
    for axis in (0, 1):
      for shift in (-1, 1):
        grown |= np.roll(inside, shift, axis)
    assert not (changed & ~grown).any()
    assert per_cell[~np.isin(np.arange(per_cell.size), cells)].max(
        initial=0) <= 8


def test_object_mask():
  exs = synthetic.make_examples(1, range(4))
  mask = synthetic.object_mask(exs, SPEC.num_tokens)
  assert mask.shape == (4, 64)
  for row, ex in zip(mask, exs):
    assert np.flatnonzero(row).tolist() == ex.object_cells.tolist()
  with pytest.raises(ValueError, match="grids differ"):
    synthetic.object_mask(exs, 16)


def test_bad_arguments():
  with pytest.raises(ValueError):
    synthetic.make_example(-1, 0)
  with pytest.raises(ValueError):
    synthetic.make_example(0, 0, synthetic.TaskSpec(max_objects=5))
  with pytest.raises(ValueError):
    synthetic.make_example(0, 0, synthetic.TaskSpec(image_size=60))


def test_write_split(tmp_path):
  from PIL import Image
  manifest = synthetic.write_split(str(tmp_path), 2, range(3), name="val")
  rows = [json.loads(line) for line in open(manifest)]
  assert len(rows) == 3
  for i, row in enumerate(rows):
    ex = synthetic.make_example(2, i)
    assert row["caption"] == ex.caption
    assert row["object_cells"] == ex.object_cells.tolist()
    np.testing.assert_array_equal(np.asarray(Image.open(row["image"])),
                                  ex.image)


HARD = synthetic.TaskSpec(min_distractors=2, max_distractors=5)


def test_distractors_leave_the_objects_and_the_caption_unchanged():
  """The harder variant draws its distractors last: the same (seed, index)
  keeps its objects, caption, background and noise."""
  counts = set()
  for i in range(40):
    easy = synthetic.sample_scene(3, i)
    hard = synthetic.sample_scene(3, i, HARD)
    assert easy.distractors == ()
    assert hard.objects == easy.objects
    assert synthetic.caption(hard) == synthetic.caption(easy)
    np.testing.assert_array_equal(synthetic.render(hard, with_objects=False),
                                  synthetic.render(easy, with_objects=False))
    cells = synthetic.distractor_cells(hard)
    counts.add(len(cells))
    assert not set(cells) & set(synthetic.object_cells(hard))
    assert len(set(cells)) == len(cells)
    for d in hard.distractors:  # Unnamed colours; nothing in the caption.
      assert d.colour in synthetic.DISTRACTOR_COLOURS and d.quadrant == -1
      assert d.colour not in synthetic.WORDS
  assert counts == {2, 3, 4, 5}


def test_distractor_pixels_are_drawn_and_achromatic():
  hard = synthetic.sample_scene(5, 1, HARD)
  plain = synthetic.render(hard, with_objects=False).astype(int)
  img = synthetic.render(hard).astype(int)
  s = HARD.image_size
  for d in hard.distractors:
    inside = synthetic.shape_mask(d, s)
    diff = np.abs(img[inside] - plain[inside]).mean()
    assert diff > 40, (d, diff)  # Far from the background it covers.
    colour = np.asarray(synthetic.DISTRACTOR_COLOURS[d.colour])
    # Painted colour plus the image's pixel noise (std 10), then clipped.
    assert np.abs(img[inside] - colour).mean() < 15
  ex = synthetic.make_example(5, 1, HARD)
  np.testing.assert_array_equal(ex.distractor_cells,
                                synthetic.distractor_cells(hard))


def test_distractor_spec_is_checked():
  with pytest.raises(ValueError, match="max_distractors=61"):
    synthetic.TaskSpec(max_distractors=61).validate()
  with pytest.raises(ValueError, match="min_distractors=3"):
    synthetic.TaskSpec(min_distractors=3, max_distractors=2).validate()


def test_source_renders_its_task():
  src = synthetic.SyntheticSource(3, 10, 4, spec=HARD)
  np.testing.assert_array_equal(src[2]["image"],
                                synthetic.make_example(3, 12, HARD).image)
  assert "max_distractors=5" in repr(src)
  assert repr(synthetic.SyntheticSource(3, 10, 4)) == (
      "SyntheticSource(seed=3, start=10, n=4)")
