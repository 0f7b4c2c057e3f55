"""The paper's training ablations as options of the method: every (gate,
Denoiser) pair trains under jit on the tiny model, "none" is the identity,
the config fields reach the method (and fail as one-line errors), a narrow
Scorer is exported and rebuilt for inference."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from conftest import tiny_autoselect

from autoselect_jax import Denoiser, Scorer, train_loss
from autoselect_jax.training.client import Client
from autoselect_jax.training.config import ConfigError, validate
from autoselect_jax.training.objective import Objective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATES = ("vp", "scale", "gumbel_ste")
DENOISERS = ("diagonal", "global", "none")
# Keys (gate, noise, denoiser): every gate with every Denoiser, the no-noise
# VP gate, and the paper's method with a 16-wide Scorer (Dv = 32).
NO_NOISE = ("vp", False, "diagonal")
NARROW = ("vp", True, "narrow")
KEYS = tuple((g, True, d) for g in GATES for d in DENOISERS) + (NO_NOISE,
                                                                 NARROW)


def _perturb(tree, seed):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def combos():
  """{key: (method, params, loss, aux, grads)} for KEYS, all from ONE jitted
  program (one compile instead of eleven). The diagonal Denoiser is fresh
  (the identity), the global one perturbed (so it mixes tokens)."""
  method, params, frozen, images = tiny_autoselect("tiny")
  feats = jax.jit(method.vlm.encode_image)(frozen, images)
  text = dict(tokens=jnp.array([[2, 5, 6, 7, 8, 1, 0], [2, 9, 10, 11, 1, 0, 0]]),
              input_mask=jnp.array([[1, 1, 1, 1, 1, 1, 0],
                                    [1, 1, 1, 1, 1, 0, 0]], bool),
              mask_ar=jnp.array([[0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0]]))
  text["loss_mask"] = text["mask_ar"]
  global_den = Denoiser(num_heads=4, attention="global")
  narrow = Scorer(width=16, num_heads=4)
  init = jax.jit(lambda x: (
      _perturb(global_den.init(jax.random.key(5), x)["params"], 6),
      narrow.init(jax.random.key(7), x)["params"]))
  global_params, narrow_params = init(feats)
  den_params = {"diagonal": params["denoiser"], "global": global_params}
  methods, trees = {}, {}
  for key in KEYS:
    gate, noise, den = key
    methods[key] = dataclasses.replace(
        method, gate=gate, noise=noise,
        denoiser=None if den == "none" else dataclasses.replace(
            method.denoiser, attention=den if den == "global" else
            "diagonal"))
    trees[key] = {"scorer": params["scorer"]}
    if den != "none":
      trees[key]["denoiser"] = den_params.get(den, params["denoiser"])
  methods[NARROW] = dataclasses.replace(methods[NARROW], scorer=narrow)
  trees[NARROW]["scorer"] = narrow_params

  def all_losses(trees):
    return {key: jax.value_and_grad(
        lambda p, m=m: train_loss(m, p, frozen, feats, text,
                                  jax.random.key(3), 5, 0.7),
        has_aux=True)(trees[key]) for key, m in methods.items()}

  out = jax.jit(all_losses)(trees)
  return {key: (methods[key], trees[key], float(loss), aux, grads)
          for key, ((loss, aux), grads) in out.items()}


def test_every_gate_and_denoiser_trains_with_finite_gradients(combos):
  assert len(combos) == len(GATES) * len(DENOISERS) + 2
  for key, (_, params, loss, aux, grads) in combos.items():
    assert np.isfinite(loss) and loss > 0, key
    assert set(grads) == set(params), key
    for leaf in jax.tree_util.tree_leaves(grads):
      assert np.all(np.isfinite(np.asarray(leaf))), key
    # The loss reaches the Scorer through every gate (Gumbel-STE included).
    assert float(jnp.abs(grads["scorer"]["head"]["kernel"]).max()) > 0, key
    if "denoiser" in grads:
      out = grads["denoiser"]["block"]["attn"]["out"]["kernel"]
      assert float(jnp.abs(out).max()) > 0, key
    assert 0.0 <= float(aux["alpha_dropped"]) <= float(aux["alpha_kept"])
  assert "query" in combos[("vp", True, "global")][4]["denoiser"]["block"][
      "attn"]
  assert "input_proj" in combos[NARROW][4]["scorer"]


def test_the_switches_change_the_loss_and_none_is_the_identity(combos):
  loss = {key: value[2] for key, value in combos.items()}
  for gate in GATES:
    # No Denoiser == the fresh (identity) diagonal Denoiser; the perturbed
    # global one moves the loss.
    np.testing.assert_allclose(loss[(gate, True, "none")],
                               loss[(gate, True, "diagonal")], rtol=1e-6)
    assert abs(loss[(gate, True, "global")]
               - loss[(gate, True, "none")]) > 1e-4, gate
  # Each gate, and the VP gate without noise, gives its own loss.
  gated = [loss[(gate, True, "diagonal")] for gate in GATES]
  gated.append(loss[NO_NOISE])
  assert len(set(gated)) == len(gated), gated
  assert combos[("vp", True, "none")][1].keys() == {"scorer"}


def test_config_overrides_reach_the_method():
  """--config.autoselect.* through ml_collections' own flag parsing (as
  `python -m autoselect_jax.train` does), checked, then built."""
  argv = ["train", f"--config={os.path.join(REPO, 'configs/demo.py')}",
          "--config.autoselect.gate=gumbel_ste",
          "--config.autoselect.noise=False",
          "--config.autoselect.denoiser=none",
          "--config.autoselect.scorer_width=32"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  fv(argv)
  c = fv.config
  stub = Client(frozen_vlm=lambda c, w: "", sources=lambda c: None)
  validate(c, num_devices=1, client=stub)
  method, _, _, _ = tiny_autoselect("tiny")
  m = Objective.from_config(c, method.vlm).method
  assert (m.gate, m.noise, m.denoiser) == ("gumbel_ste", False, None)
  assert m.scorer.width == 32
  # The defaults are the paper's method (vp gate with noise, diagonal).
  from configs import demo
  d = Objective.from_config(demo.get_config(), method.vlm).method
  assert (d.gate, d.noise, d.denoiser) == ("vp", True, Denoiser(num_heads=4))
  assert d.scorer.width is None
  c.unlock()
  c.autoselect.denoiser = "global"
  m = Objective.from_config(c, method.vlm).method
  assert m.denoiser == Denoiser(num_heads=4, attention="global")


def test_bad_ablation_values_are_config_errors():
  from configs import demo
  stub = Client(frozen_vlm=lambda c, w: "", sources=lambda c: None)
  for field, value, words in (
      ("gate", "gumbel", "must be one of 'vp', 'scale', 'gumbel_ste'"),
      ("denoiser", "diagonl", "must be one of 'diagonal', 'global', 'none'"),
      ("noise", "no", "must be True or False"),
      ("scorer_width", 30, "is not divisible by autoselect.scorer_heads=4")):
    c = demo.get_config()
    if field == "noise":  # The config's own type check stops a str here;
      del c.autoselect[field]  # a config file could still hold one.
    c.autoselect[field] = value
    with pytest.raises(ConfigError) as e:
      validate(c, num_devices=1, client=stub)
    assert e.value.field == f"autoselect.{field}"
    assert str(e.value) == f"autoselect.{field}={value!r} {words}"


def test_cli_rejects_an_unknown_gate_in_one_line(tmp_path):
  """Before the demo client pre-trains anything (no workdir is made)."""
  w = str(tmp_path / "w")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  r = subprocess.run(
      [sys.executable, "-m", "autoselect_jax.train", "--config",
       os.path.join(REPO, "configs/demo.py"), "--workdir", w,
       "--config.autoselect.gate=gumbel"],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  line = r.stderr.strip()
  assert "\n" not in line and "Traceback" not in line, line
  assert "autoselect.gate='gumbel' must be one of" in line
  assert not os.path.exists(w)


def test_narrow_scorer_exports_and_is_rebuilt_for_inference(combos, tmp_path):
  from autoselect_jax.checkpoints.scorer import export_scorer
  from autoselect_jax.inference.pipeline import load_learned_scores
  from autoselect_jax.method import scores
  method, params, _, _, _ = combos[NARROW]
  obj = Objective(method)
  cfg = obj.scorer_export_config("ckpt")
  assert cfg["scorer"]["width"] == 16
  out = str(tmp_path / "scorer")
  export_scorer(out, params["scorer"], cfg)
  learned, loaded, policy = load_learned_scores(out, method.vlm)
  assert learned.scorer == method.scorer and policy == "original"
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded,
                         jax.device_get(params["scorer"]))
  x = jax.random.normal(jax.random.key(8), (1, 16, 32))
  np.testing.assert_array_equal(
      learned.scorer.apply({"params": loaded}, x),
      scores(method, params, x))


def test_optimizer_steps_on_the_tree_without_a_denoiser(combos):
  import ml_collections
  import optax
  from autoselect_jax.training.loop import make_optimizer
  _, params, _, _, grads = combos[("gumbel_ste", True, "none")]
  c = ml_collections.ConfigDict({"optim": {
      "lr": 1e-3, "warmup_steps": 1, "weight_decay": 1e-4, "b1": 0.9,
      "b2": 0.999, "grad_clip_norm": 1.0}})
  tx, _ = make_optimizer(c, 10)

  @jax.jit
  def two_steps(params):
    state = tx.init(params)
    for _ in range(2):  # The warm-up's first step has lr = 0.
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return params

  new = two_steps(params)
  assert new.keys() == {"scorer"}
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                 new, params)
  assert max(jax.tree_util.tree_leaves(moved)) > 0
