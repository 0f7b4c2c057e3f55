"""Every pruning method through the one selection path (inference/pruners.py,
inference/prune.py): the deployed prefix of each method is the sequence of
its baseline's own indices (and VisionZip's merged features), random is
seeded per example, and bad methods fail with clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import baselines
from autoselect_jax.inference import pruners
from autoselect_jax.inference.prune import jit_pruned_prefix, select
from autoselect_jax.method.selection import gather_tokens, selected_sequence

from conftest import tiny_autoselect

K = 5


@pytest.fixture(scope="module")
def setup():
  method, params, frozen, images = tiny_autoselect()
  # Perturb every weight: a freshly initialised final LayerNorm gives every
  # token the same norm, and ties would hide a wrong order.
  leaves, tree = jax.tree.flatten(frozen)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  frozen = jax.tree.unflatten(tree, [
      x + 0.1 * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(leaves, keys)])
  t = 6
  tokens = jax.random.randint(jax.random.key(3), (2, t), 1, 50)
  mask = jnp.ones((2, t), bool).at[1, 4:].set(False)
  ar = jnp.zeros((2, t), jnp.int32).at[:, 3:].set(1)
  return method, params, frozen, images, (tokens, mask, ar)


def _expected_index(name, vlm, frozen, images):
  feats, att = vlm.encode_image(frozen, images, last_attention=True)
  if name == "grid":
    return baselines.grid_select(feats, K), None
  if name == "norm":
    return baselines.norm_select(feats, K), None
  if name == "divprune":
    return baselines.divprune_select(feats, K), None
  if name == "attention":
    return baselines.attention_select(feats, K, received=att.received), None
  assert name == "visionzip"
  return baselines.visionzip_select(feats, K, received=att.received,
                                    keys=att.keys,
                                    num_heads=vlm.config.vision.num_heads)


@pytest.mark.parametrize("name,policy", [
    ("grid", "original"), ("norm", "original"), ("divprune", "original"),
    ("attention", "original"), ("visionzip", "original"),
    ("visionzip", "packed")])  # Positions are the shared code's concern.
def test_each_baseline_prefix_is_its_own_selection(setup, name, policy):
  method, _, frozen, images, text = setup
  vlm = method.vlm
  pruner, pp = pruners.make_pruner(
      name, vision_heads=vlm.config.vision.num_heads)
  seq, kept = jit_pruned_prefix(vlm, frozen, images, *text, k=K,
                                pruner=pruner, pruner_params=pp,
                                policy=policy)
  index, merged = _expected_index(name, vlm, frozen, images)
  np.testing.assert_array_equal(kept, index)
  feats = vlm.encode_image(frozen, images)
  want = selected_sequence(vlm, frozen, feats, index, *text, policy,
                           kept_features=merged)
  np.testing.assert_allclose(seq.embeddings, want.embeddings, atol=1e-6)
  np.testing.assert_array_equal(seq.positions, want.positions)
  if name == "visionzip":  # Contextual tokens are merged, not gathered.
    gathered = vlm.project(frozen, gather_tokens(feats, index))
    assert not np.allclose(seq.embeddings[:, :K], gathered, atol=1e-4)


def test_autoselect_keeps_the_scorers_top_k(setup):
  method, params, frozen, images, _ = setup
  vlm = method.vlm
  pruner, pp = pruners.make_pruner("autoselect", scorer=method.scorer,
                                   scorer_params=params["scorer"])
  feats, kept = select(vlm, frozen, images, K, pruner, pp)
  scores = np.asarray(method.scorer.apply({"params": params["scorer"]},
                                          feats))
  np.testing.assert_array_equal(kept.scores, scores)
  for b in range(2):
    np.testing.assert_array_equal(kept.index[b],
                                  np.sort(np.argsort(-scores[b])[:K]))
  np.testing.assert_array_equal(kept.features, gather_tokens(feats,
                                                             kept.index))


def test_random_is_seeded_per_example(setup):
  method, _, frozen, images, _ = setup
  vlm = method.vlm
  pruner, key = pruners.make_pruner("random", seed=3)
  _, both = select(vlm, frozen, images, K, pruner, key)
  _, first = select(vlm, frozen, images[:1], K, pruner, key)
  _, again = select(vlm, frozen, images[::-1], K, pruner, key)
  # Example b draws from fold_in(key(seed), b): batch position, not content.
  np.testing.assert_array_equal(first.index[0], both.index[0])
  np.testing.assert_array_equal(again.index, both.index)
  _, other = select(vlm, frozen, images, K, pruner, jax.random.key(4))
  assert not np.array_equal(other.index, both.index)
  idx = np.asarray(both.index)
  assert (np.diff(idx, axis=1) > 0).all() and idx.max() < 16


def test_k_equal_n_needs_no_pruner_and_keeps_all(setup):
  method, _, frozen, images, _ = setup
  n = method.vlm.num_visual_tokens
  feats, kept = select(method.vlm, frozen, images, n)
  np.testing.assert_array_equal(kept.index, np.tile(np.arange(n), (2, 1)))
  np.testing.assert_array_equal(kept.features, feats)
  with pytest.raises(ValueError, match="needs a pruner"):
    select(method.vlm, frozen, images, n - 1)


def test_bad_methods_name_the_problem():
  with pytest.raises(ValueError, match="unknown method 'cls'"):
    pruners.make_pruner("cls")
  with pytest.raises(ValueError, match="needs a trained Scorer"):
    pruners.make_pruner("autoselect")
  with pytest.raises(ValueError, match="seed must be an int"):
    pruners.make_pruner("random", seed=1.5)
  assert pruners.make_pruner("full") == (None, None)
  assert pruners.make_pruner("fastv", fastv_layer=1)[0] == pruners.FastV(1)
  attention, _ = pruners.make_pruner("attention")
  with pytest.raises(ValueError, match="last-block attention"):
    attention(None, jnp.zeros((1, 16, 8)), 4)


def test_pruners_are_static_jit_arguments():
  """Equal pruners hash alike, so a second make_pruner reuses the compile."""
  for name in ("grid", "norm", "attention", "divprune", "visionzip",
               "random"):
    assert hash(pruners.make_pruner(name)[0]) == hash(
        pruners.make_pruner(name)[0])
