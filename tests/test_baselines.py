"""Training-free selections (autoselect_jax/baselines.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import baselines

N, D = 16, 6
X = jax.random.normal(jax.random.key(0), (3, N, D))


def _divprune_numpy(x, k):
  """The greedy max-min rule written out with loops, float64."""
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  dist = 1.0 - x @ x.T
  n = len(x)
  nearest = [min(dist[i, j] for j in range(n) if j != i) for i in range(n)]
  chosen = [int(np.argmax(nearest))]
  while len(chosen) < k:
    gaps = [-np.inf if i in chosen else min(dist[i, j] for j in chosen)
            for i in range(n)]
    chosen.append(int(np.argmax(gaps)))
  return sorted(chosen)


@pytest.mark.parametrize("k", [1, 5, N])
def test_every_selection_is_ascending_distinct_and_in_range(k):
  outs = [baselines.random_select(X, k, jax.random.key(1)),
          baselines.grid_select(X, k), baselines.norm_select(X, k),
          baselines.divprune_select(X, k)]
  for idx in map(np.asarray, outs):
    assert idx.shape == (3, k) and idx.dtype == np.int32
    assert idx.min() >= 0 and idx.max() < N
    assert (np.diff(idx, axis=1) > 0).all()


def test_divprune_matches_the_greedy_rule():
  x = np.asarray(X, np.float64)
  for k in (2, 5, 9):
    got = np.asarray(jax.jit(baselines.divprune_select,
                             static_argnums=1)(X, k))
    for b in range(3):
      assert got[b].tolist() == _divprune_numpy(x[b], k)


def _divprune_reference_form(x, k):
  """DivPrune's published loop in its own form: step 0 scores each token by
  the 2nd-smallest distance in its column (self included), later steps by
  the min over the selected rows, argmax over all N (no mask)."""
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  dist = 1.0 - x @ x.T
  chosen = []
  for i in range(k):
    scores = (np.sort(dist, axis=0)[1] if i == 0
              else dist[chosen].min(axis=0))
    chosen.append(int(np.argmax(scores)))
  return sorted(chosen)


def test_divprune_matches_the_reference_loop_on_distinct_tokens():
  """Same picks as DivPrune's code whenever no two tokens are parallel (then
  a selected token's own distance 0 keeps it from being picked again)."""
  x = np.asarray(jax.random.normal(jax.random.key(7), (4, 24, 5)), np.float64)
  got = np.asarray(baselines.divprune_select(jnp.asarray(x, jnp.float32), 10))
  for b in range(4):
    assert got[b].tolist() == _divprune_reference_form(x[b], 10)


def test_divprune_prefers_distinct_tokens():
  """Three copies of one direction and three of another, plus noise tokens:
  the two first picks are never copies of each other."""
  base = np.eye(D, dtype=np.float32)
  x = np.stack([base[0]] * 3 + [base[1]] * 3 + [base[2] + base[3]]
               + [base[4]] * 9)[None]
  idx = np.asarray(baselines.divprune_select(jnp.asarray(x), 4))[0]
  groups = {0: {0, 1, 2}, 1: {3, 4, 5}, 2: {6}, 3: set(range(7, 16))}
  hit = [next(g for g, s in groups.items() if i in s) for i in idx]
  assert sorted(hit) == [0, 1, 2, 3]


def test_norm_and_grid():
  norms = np.linalg.norm(np.asarray(X), axis=-1)
  np.testing.assert_array_equal(baselines.norm_select(X, 4),
                                np.sort(np.argsort(-norms)[:, :4], axis=1))
  # 4 of a 4 x 4 grid: the centres of the four 2 x 2 quadrants' cells.
  assert baselines.grid_indices(16, 4).tolist() == [5, 7, 13, 15]
  assert baselines.grid_indices(16, 16).tolist() == list(range(16))
  got = baselines.grid_indices(256, 64)  # 8 x 8 of 16 x 16: every other cell.
  rows, cols = np.divmod(np.asarray(got), 16)
  assert sorted(set(rows)) == list(range(1, 16, 2)) == sorted(set(cols))


def test_random_is_seeded_and_errors_are_clear():
  a = baselines.random_select(X, 5, jax.random.key(3))
  np.testing.assert_array_equal(a, baselines.random_select(X, 5,
                                                           jax.random.key(3)))
  assert not np.array_equal(a, baselines.random_select(X, 5,
                                                       jax.random.key(4)))
  with pytest.raises(ValueError, match="square token grid"):
    baselines.grid_indices(12, 4)
  with pytest.raises(ValueError, match="1 <= k <= N"):
    baselines.divprune_select(X, N + 1)
  with pytest.raises(ValueError, match=r"features must be \(B, N, D\)"):
    baselines.norm_select(X[0], 2)


# --- The encoder's last-block attention (models/siglip.py, attention.py) ---

def _layer_norm(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p, axes):
  return np.tensordot(x, p["kernel"], axes=axes) + p["bias"]


def _siglip_numpy(img, images, cfg):
  """The SigLIP tower written out in float64 from the scan-layout params:
  (features (B, N, Dv), received (B, N), keys (B, N, Dv)) of the last block."""
  p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), img)
  b, s = images.shape[:2]
  ps, g = cfg.patch_size, cfg.image_size // cfg.patch_size
  x = np.asarray(images, np.float64).reshape(b, g, ps, g, ps, 3)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, ps * ps * 3)
  kernel = p64["embedding"]["kernel"].reshape(ps * ps * 3, cfg.width)
  x = x @ kernel + p64["embedding"]["bias"] + p64["pos_embedding"]
  e = cfg.width // cfg.num_heads
  blocks = p64["Transformer"]["encoderblock"]
  for i in range(cfg.depth):
    blk = jax.tree_util.tree_map(lambda a: a[i], blocks)
    att = blk["MultiHeadDotProductAttention_0"]
    y = _layer_norm(x, blk["LayerNorm_0"], cfg.layer_norm_eps)
    q = _dense(y, att["query"], 1) * e ** -0.5            # (B, N, H, E)
    k = _dense(y, att["key"], 1)
    v = _dense(y, att["value"], 1)
    logits = np.einsum("bqhe,bkhe->bhqk", q, k)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    received = probs.mean(axis=(1, 2))
    keys = k.reshape(b, -1, cfg.width)
    y = _dense(np.einsum("bhqk,bkhe->bqhe", probs, v), att["out"], 2)
    x = x + y
    y = _layer_norm(x, blk["LayerNorm_1"], cfg.layer_norm_eps)
    y = _dense(y, blk["MlpBlock_0"]["Dense_0"], 1)
    y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))
    x = x + _dense(y, blk["MlpBlock_0"]["Dense_1"], 1)
  return (_layer_norm(x, p64["Transformer"]["encoder_norm"],
                      cfg.layer_norm_eps), received, keys)


@pytest.fixture(scope="module")
def tiny_tower():
  """A 3-block tiny VLM (N = 16, Dv = 32, 4 heads), scan-layout params and
  2 images."""
  import dataclasses
  from autoselect_jax.models import VLM, get_variant
  cfg = get_variant("tiny")
  cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision,
                                                            depth=3))
  params = jax.jit(VLM(cfg).init_params)(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1.0,
                              maxval=1.0)
  return cfg, params, images


@pytest.mark.parametrize("scan", [True, False])
def test_last_attention_matches_a_hand_computed_forward(tiny_tower, scan):
  from autoselect_jax.models import VLM
  from autoselect_jax.models.attention import LastAttention
  from autoselect_jax.models.paligemma import unstack_layers
  cfg, params, images = tiny_tower
  vlm = VLM(cfg, scan_layers=scan)
  p = params if scan else unstack_layers(params)
  plain = jax.jit(vlm.encode_image)(p, images)
  feats, att = jax.jit(lambda p, im: vlm.encode_image(
      p, im, last_attention=True))(p, images)
  assert isinstance(att, LastAttention)
  assert att.received.shape == (2, 16) and att.received.dtype == jnp.float32
  assert att.keys.shape == (2, 16, 32)
  np.testing.assert_array_equal(feats, plain)   # The option changes nothing.
  ref_x, ref_received, ref_keys = _siglip_numpy(params["img"], images,
                                                cfg.vision)
  np.testing.assert_allclose(feats, ref_x, atol=2e-5)
  np.testing.assert_allclose(att.received, ref_received, atol=1e-6)
  np.testing.assert_allclose(att.keys, ref_keys, atol=2e-5)
  np.testing.assert_allclose(np.asarray(att.received).sum(-1), 1.0, atol=1e-6)


def test_last_attention_layouts_agree(tiny_tower):
  from autoselect_jax.models import VLM
  from autoselect_jax.models.paligemma import unstack_layers
  cfg, params, images = tiny_tower
  def last(vlm):
    return jax.jit(lambda p, im: vlm.encode_image(p, im, last_attention=True)[1])
  a = last(VLM(cfg))(params, images)
  b = last(VLM(cfg, scan_layers=False))(unstack_layers(params), images)
  np.testing.assert_allclose(a.received, b.received, atol=1e-7)
  np.testing.assert_allclose(a.keys, b.keys, atol=1e-6)


def test_attention_select_is_topk_of_received(tiny_tower):
  from autoselect_jax.models import VLM
  cfg, params, images = tiny_tower
  feats, att = jax.jit(lambda p, im: VLM(cfg).encode_image(
      p, im, last_attention=True))(params, images)
  got = jax.jit(baselines.attention_select, static_argnums=1)(
      feats, 5, received=att.received)
  want = np.sort(np.argsort(-np.asarray(att.received), kind="stable")[:, :5])
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match=r"received must be \(B, N\)"):
    baselines.attention_select(feats, 5, received=att.received[:, :8])


# --- VisionZip ---

def _visionzip_numpy(x, k, received, keys, dominant, num_heads):
  """VisionZip's rule for one example, with loops, float64."""
  n = len(x)
  d = dominant
  order = sorted(range(n), key=lambda i: (-received[i], i))
  kept = {i: x[i] for i in order[:d]}
  rest = [i for i in range(n) if i not in kept]
  c = k - d
  if c:
    step = max(1, len(rest) // c)
    slots = list(range(0, len(rest), step))[:c]
    targets = [rest[s] for s in slots]
    metric = keys.reshape(n, num_heads, -1).mean(1)
    metric = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    joined = {t: [] for t in targets}
    for s, i in enumerate(rest):
      if s not in slots:
        sims = [metric[i] @ metric[t] for t in targets]
        joined[targets[int(np.argmax(sims))]].append(i)
    for t in targets:
      kept[t] = x[t] + (np.mean([x[i] for i in joined[t]], axis=0)
                        if joined[t] else 0.0)
  index = sorted(kept)
  return index, np.stack([kept[i] for i in index])


def _zip_inputs(seed, b=3, n=N, dk=8):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], (b, n, D))
  received = jax.nn.softmax(jax.random.normal(keys[1], (b, n)) * 2, axis=-1)
  return x, received, jax.random.normal(keys[2], (b, n, dk))


_zip = jax.jit(baselines.visionzip_select, static_argnums=1,
               static_argnames=("dominant", "num_heads"))


@pytest.mark.parametrize("k,dominant,heads", [
    (2, None, 1), (5, None, 2), (9, None, 1), (6, 2, 2), (7, 0, 1),
    (4, 4, 1), (1, None, 2)])
def test_visionzip_matches_a_loop_implementation(k, dominant, heads):
  x, received, keys = _zip_inputs(k)
  index, kept = _zip(x, k, received=received, keys=keys, dominant=dominant,
                     num_heads=heads)
  d = baselines.visionzip_split(k, dominant)[0]
  assert index.shape == (3, k) and index.dtype == jnp.int32
  assert kept.shape == (3, k, D) and kept.dtype == x.dtype
  for b in range(3):
    want_idx, want = _visionzip_numpy(
        np.asarray(x[b], np.float64), k, np.asarray(received[b], np.float64),
        np.asarray(keys[b], np.float64), d, heads)
    assert index[b].tolist() == want_idx
    np.testing.assert_allclose(kept[b], want, atol=1e-5)


def test_visionzip_split_and_invariants():
  assert baselines.visionzip_split(64) == (54, 10)
  assert baselines.visionzip_split(128) == (108, 20)
  assert baselines.visionzip_split(192) == (162, 30)
  assert baselines.visionzip_split(1) == (1, 0)
  assert baselines.visionzip_split(2) == (1, 1)
  assert baselines.visionzip_split(3) == (2, 1)
  assert baselines.visionzip_split(5, dominant=0) == (0, 5)
  x, received, keys = _zip_inputs(0)
  for k in (1, 3, 8, N):
    index, kept = _zip(x, k, received=received, keys=keys)
    again = _zip(x, k, received=received, keys=keys)
    np.testing.assert_array_equal(index, again[0])      # Deterministic.
    np.testing.assert_array_equal(kept, again[1])
    index, kept = np.asarray(index), np.asarray(kept)
    assert (np.diff(index, axis=1) > 0).all() and index.max() < N
    d = baselines.visionzip_split(k)[0]
    top = np.argsort(-np.asarray(received), axis=1, kind="stable")[:, :d]
    for b in range(3):  # Dominant tokens keep their own features.
      assert set(top[b]) <= set(index[b])
      rows = np.searchsorted(index[b], top[b])
      np.testing.assert_array_equal(kept[b, rows], np.asarray(x)[b, top[b]])
  # K = N: every token is kept, every feature unchanged.
  np.testing.assert_array_equal(index, np.broadcast_to(np.arange(N), (3, N)))
  np.testing.assert_array_equal(kept, x)
  with pytest.raises(ValueError, match="0 <= dominant <= K"):
    baselines.visionzip_select(x, 4, received=received, keys=keys, dominant=5)
  with pytest.raises(ValueError, match="divisible by num_heads=3"):
    baselines.visionzip_select(x, 4, received=received, keys=keys, num_heads=3)
  with pytest.raises(ValueError, match=r"keys must be \(B, N, Dk\)"):
    baselines.visionzip_select(x, 4, received=received, keys=keys[:, :4])


def test_visionzip_merges_into_the_most_similar_target():
  """N = 6, K = 3 with 1 dominant: remaining 1..5, step 5 // 2 = 2, targets
  1 and 3; 2 and 5 have keys like 1's, 4 like 3's."""
  e = np.eye(4, dtype=np.float32)
  keys = np.stack([e[2], e[0], e[0] + 0.1 * e[1], e[1], e[1], e[0]])[None]
  x = np.arange(6 * 2, dtype=np.float32).reshape(1, 6, 2)
  received = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]], np.float32)
  index, kept = baselines.visionzip_select(
      jnp.asarray(x), 3, received=jnp.asarray(received),
      keys=jnp.asarray(keys), dominant=1)
  assert index.tolist() == [[0, 1, 3]]
  np.testing.assert_allclose(kept[0], [x[0, 0], x[0, 1] + (x[0, 2] + x[0, 5]) / 2,
                                       x[0, 3] + x[0, 4]])
