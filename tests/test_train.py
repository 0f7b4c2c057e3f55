"""`python -m autoselect_jax.train`: config checks, sharding equivalence,
multi-process training, kill/resume, the Scorer export, per-step budgets and
the demo client (subprocesses on CPU devices). Runs are a few steps of a tiny
model; one run serves several tests where it can (module fixtures)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import hf_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """64 random 32x32 images with word captions, as a JSONL manifest."""
  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  lines = []
  for i, image in enumerate(hf_reference.random_images(64, 32, seed=5)):
    image.save(root / f"{i}.png")
    caption = " ".join(rng.choice(hf_reference.WORDS[:12], rng.integers(2, 5)))
    lines.append(json.dumps({"image": f"{i}.png", "caption": caption}))
  (root / "train.jsonl").write_text("\n".join(lines))
  return str(root / "train.jsonl")


BASE = {"model.dtype": "float32", "data.max_text_len": 16,
        "autoselect.k": 4, "autoselect.scorer_heads": 4,
        "autoselect.denoiser_heads": 4, "batch_size": 8, "num_steps": 6,
        "log_every": 1, "eval_every": 1000, "tau.steps": 4,
        "optim.warmup_steps": 1, "optim.lr": 1e-2,
        "sharding.min_fsdp_size": 0,  # The tiny model's arrays get sharded.
        "checkpoint.async_save": False, "distributed.initialize": "no"}


def _overrides(ckpt, data, **overrides):
  return {"model.checkpoint": ckpt, "data.train_path": data, **BASE,
          **overrides}


def _args(ckpt, data, workdir, **overrides):
  return (["-m", "autoselect_jax.train", "--config",
           os.path.join(REPO, "configs/paligemma.py"), "--workdir", workdir]
          + [f"--config.{k}={v}"
             for k, v in _overrides(ckpt, data, **overrides).items()])


def _env(devices=1):
  # Inherits os.environ (e.g. a persistent compilation cache dir).
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run(args, devices=1, timeout=300, code=0):
  r = subprocess.run([sys.executable] + args, env=_env(devices), cwd=REPO,
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == code, r.stdout[-2000:] + r.stderr[-4000:]
  return r


def _rows(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return [r for r in rows if r["split"] == split]


def _losses(workdir):
  return {r["step"]: r["loss"] for r in _rows(workdir)}


def _steps_saved(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit())


def _final_state(workdir, step):
  """The checkpointed train state on this process's one device (also when
  it was saved sharded over several devices or processes)."""
  import jax
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata.tree
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
    return ckptr.restore(path, target)


def _flat(tree):
  import jax
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_trees_close(a, b, atol):
  a, b = _flat(a), _flat(b)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], atol=atol, rtol=0, err_msg=k)


def _expected_modes():
  umask = os.umask(0)
  os.umask(umask)
  return 0o777 & ~umask, 0o666 & ~umask


def _assert_export_is(workdir, step):
  """WORKDIR/scorer holds the step's Scorer, readable per the umask."""
  from autoselect_jax.checkpoints.scorer import load_scorer
  scorer_dir = os.path.join(workdir, "scorer")
  scorer, cfg = load_scorer(scorer_dir)
  assert cfg["format"] == "autoselect_jax.scorer"
  assert cfg["scorer"]["num_heads"] == 4
  final = _flat(_final_state(workdir, step)["params"]["scorer"])
  got = _flat(scorer)
  assert final.keys() == got.keys()
  for k in final:
    np.testing.assert_array_equal(got[k], final[k])
  dir_mode, file_mode = _expected_modes()
  assert os.stat(scorer_dir).st_mode & 0o777 == dir_mode
  for name in os.listdir(scorer_dir):
    assert os.stat(os.path.join(scorer_dir, name)).st_mode & 0o777 == file_mode
  return got


@pytest.fixture(scope="module")
def one_device_run(hf_mqa, dataset, tmp_path_factory):
  """4 steps on 1 device: the reference of several tests."""
  workdir = str(tmp_path_factory.mktemp("one") / "w")
  _run(_args(hf_mqa[3], dataset, workdir, num_steps=4))
  return workdir


def test_eight_devices_match_one(hf_mqa, dataset, one_device_run, tmp_path):
  eight = str(tmp_path / "eight")
  _run(_args(hf_mqa[3], dataset, eight, num_steps=4, **{
      "mesh.data": 4, "mesh.fsdp": 2, "sharding.trainable": "fsdp",
      "sharding.frozen": "fsdp"}), devices=8)
  a, b = _losses(one_device_run), _losses(eight)
  assert sorted(a) == [1, 2, 3, 4] and a.keys() == b.keys()
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])
  assert a[4] != a[1]  # Training moved.
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(one_device_run, "tensorboard")))
  _assert_export_is(one_device_run, 4)
  _assert_export_is(eight, 4)  # Gathered from FSDP shards.


def test_resumed_longer_run_exports_its_final_scorer(hf_mqa, dataset,
                                                     one_device_run, tmp_path):
  """Step 4's run, resumed with num_steps=6: the export is step 6's."""
  workdir = str(tmp_path / "extended")
  shutil.copytree(one_device_run, workdir)
  before = _assert_export_is(workdir, 4)
  r = _run(_args(hf_mqa[3], dataset, workdir, num_steps=6))
  assert "resuming at step 4" in r.stdout
  after = _assert_export_is(workdir, 6)
  assert any(not np.array_equal(before[k], v) for k, v in after.items())
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".scorer")]


def test_scorer_export_replaces_atomically_with_user_permissions(tmp_path):
  from autoselect_jax.checkpoints.scorer import export_scorer, load_scorer
  old = os.umask(0o027)
  try:
    out = str(tmp_path / "scorer")
    cfg = {"format": "autoselect_jax.scorer", "version": 1, "scorer": {}}
    export_scorer(out, {"w": np.ones((2, 3), np.float32)}, cfg)
    export_scorer(out, {"w": np.full((2, 3), 2.0, np.float32)}, cfg)
    params, _ = load_scorer(out)
    np.testing.assert_array_equal(params["w"], 2.0)
    assert os.listdir(tmp_path) == ["scorer"]  # No temporary folders left.
    assert os.stat(out).st_mode & 0o777 == 0o750
    for name in os.listdir(out):
      assert os.stat(os.path.join(out, name)).st_mode & 0o777 == 0o640
  finally:
    os.umask(old)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_params(hf_mqa, dataset, tmp_path):
  """With validation every step and early stopping (every evaluation after
  the first counts as no improvement: min_delta 100), both runs stop at
  step 6 = 1 + patience: the resumed run must restore the count."""
  ckpt = hf_mqa[3]
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  over = {"num_steps": 8, "checkpoint.every": 2, "data.val_path": dataset,
          "eval_every": 1, "eval_batches": 1, "early_stopping_patience": 5,
          "early_stopping_min_delta": 100.0}
  r = _run(_args(ckpt, dataset, ref, **over))
  assert "early stopping at step 6" in r.stdout and _steps_saved(ref)[-1] == 6
  args = _args(ckpt, dataset, killed, debug_step_delay=1.0, **over)
  proc = subprocess.Popen([sys.executable] + args, env=_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 240
    ckdir = os.path.join(killed, "checkpoints")
    while time.time() < deadline:  # Kill once step 4 is safely on disk.
      if os.path.isdir(os.path.join(ckdir, "4")) and proc.poll() is None:
        time.sleep(0.5)
        break
      assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
      time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.isdir(os.path.join(ckdir, "6")), "run was not interrupted"
  r = _run(_args(ckpt, dataset, killed, **over))
  assert "resuming at step 4" in r.stdout
  assert "early stopping at step 6" in r.stdout, r.stdout[-2000:]
  assert _steps_saved(killed)[-1] == 6
  _assert_trees_close(_final_state(ref, 6), _final_state(killed, 6), 1e-6)
  la, lb = _losses(ref), _losses(killed)
  for step in (5, 6):  # Steps after the resume saw the same batches.
    assert abs(la[step] - lb[step]) <= 1e-6
  va = {r["step"]: r["loss_topk"] for r in _rows(ref, "val")}
  vb = {r["step"]: r["loss_topk"] for r in _rows(killed, "val")}
  assert max(vb) == 6 and abs(va[6] - vb[6]) <= 1e-6


def test_two_processes_match_one_process_on_two_devices(hf_mqa, dataset,
                                                        tmp_path):
  """FSDP-sharded trainable (and frozen) params over 2 processes started by
  the local launcher (autoselect_jax.launch.local): the same losses and final
  params as 1 process with 2 devices and the same mesh."""
  ckpt = hf_mqa[3]
  over = {"num_steps": 4, "mesh.data": 1, "mesh.fsdp": 2,
          "sharding.trainable": "fsdp", "sharding.frozen": "fsdp"}
  single = str(tmp_path / "single")
  _run(_args(ckpt, dataset, single, **over), devices=2)
  multi = str(tmp_path / "multi")
  # The launcher sets every --config.distributed.* field itself.
  train_args = [a for a in _args(ckpt, dataset, multi, **over)[2:]
                if not a.startswith("--config.distributed.")]
  r = _run(["-m", "autoselect_jax.launch.local", "--num-processes", "2",
            "--"] + train_args, timeout=600)
  outs = ["\n".join(l[len(f"[{i}] "):] for l in r.stdout.splitlines()
                    if l.startswith(f"[{i}] ")) for i in range(2)]
  assert "all 2 processes finished" in r.stderr
  assert "2 devices, 2 processes" in outs[0]
  a, b = _losses(single), _losses(multi)  # multi: written by process 0.
  assert sorted(a) == [1, 2, 3, 4] and a.keys() == b.keys()
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
  _assert_trees_close(_final_state(single, 4), _final_state(multi, 4), 1e-6)
  _assert_export_is(multi, 4)
  sums = [next(l for l in out.splitlines() if "finished at step 4" in l)
          .split("sum ")[1] for out in outs]
  assert sums[0] == sums[1]


K_CHOICES_SCRIPT = textwrap.dedent("""
    import json, sys
    from jax import monitoring
    compiles = []
    def on_event(event, duration, **kw):
      if event == "/jax/core/compile/backend_compile_duration":
        compiles.append(kw.get("fun_name"))
    monitoring.register_event_duration_secs_listener(on_event)
    from autoselect_jax.training import loop, objective
    traces = []
    train_loss = objective.Objective.train_loss
    def counted(self, *args, **kw):
      traces.append(1)
      return train_loss(self, *args, **kw)
    objective.Objective.train_loss = counted
    from configs import paligemma
    c = paligemma.get_config()
    c.update_from_flattened_dict(json.loads(sys.argv[1]))
    loop.train(c, sys.argv[2])
    step = [n for n in compiles if "train_step" in str(n)]
    print(json.dumps({"step_compiles": len(step), "traces": len(traces)}))
    """)


def test_k_choices_compile_one_step(hf_mqa, dataset, tmp_path):
  """Three budgets: one trace of the loss, one compile of the step, and the
  K drawn each step is logged."""
  workdir = str(tmp_path / "k")
  over = _overrides(hf_mqa[3], dataset, **{"autoselect.k_choices": "2,3,4"})
  r = _run(["-c", K_CHOICES_SCRIPT, json.dumps(over), workdir])
  counts = json.loads(r.stdout.strip().splitlines()[-1])
  assert counts["step_compiles"] == 1 and counts["traces"] == 1, counts
  ks = [row["k"] for row in _rows(workdir)]
  assert len(ks) == 6 and set(ks) <= {2, 3, 4} and len(set(ks)) > 1, ks


@pytest.mark.slow
def test_demo_pipeline_end_to_end_shortened(tmp_path):
  """configs/demo.py in miniature: pre-train (then cache), train, report;
  the table is recomputed here from the cached VLM and the exported Scorer."""
  workdir = str(tmp_path / "demo")
  args = ["-m", "autoselect_jax.train", "--config",
          os.path.join(REPO, "configs/demo.py"), "--workdir", workdir,
          "--config.demo.pretrain_steps=3", "--config.demo.num_train=256",
          "--config.demo.pretrain_batch_size=16", "--config.batch_size=16",
          "--config.num_steps=3", "--config.log_every=1",
          "--config.optim.warmup_steps=1",
          "--config.eval_every=3", "--config.eval_batches=1",
          "--config.demo.num_val=32", "--config.demo.num_eval=32",
          "--config.demo.budgets=4,8", "--config.checkpoint.async_save=False"]
  out = _run(args, timeout=600).stdout
  assert "pretrain: saved" in out
  assert "val: loss_topk=" in out
  saved = json.load(open(os.path.join(workdir, "demo_table.json")))
  table = {m: {int(k): v for k, v in row.items()}
           for m, row in saved["table"].items()}
  assert list(table) == ["full", "AutoSelect", "oracle", "random", "grid",
                         "norm", "attention", "divprune"]
  assert all(list(row) == [4, 8] for row in table.values())
  _check_demo_table(workdir, table, saved)
  from PIL import Image
  for name in ("selection.png", "accuracy_vs_k.png"):
    path = os.path.join(workdir, name)
    assert path in out  # Printed where it is.
    with Image.open(path) as im:
      assert min(im.size) > 200
  again = _run(args, timeout=600).stdout  # Cached VLM, finished training.
  assert "cache hit" in again and "pretrain: saved" not in again
  assert "| AutoSelect |" in again


def _check_demo_table(workdir, table, saved):
  """The table's full and AutoSelect rows, and the tokens the Scorer kept,
  recomputed from the cached VLM and the exported Scorer. (A 3-step VLM
  gets every caption wrong, so the rows are all 0 here; the kept tokens are
  what tells a stale or wrong Scorer apart.)"""
  import jax.numpy as jnp
  from autoselect_jax.checkpoints import store
  from autoselect_jax.demo import data as demo_data
  from autoselect_jax.demo import evaluate as ev
  from autoselect_jax.demo import pretrain
  from autoselect_jax.inference.pipeline import load_learned_scores
  from autoselect_jax.method import select_topk
  from autoselect_jax.models import VLM
  num_eval = saved["num_eval"]
  assert num_eval == 32 and saved["trained_k"] == "4,8,16"
  ckpt = os.path.join(workdir, pretrain.CKPT_SUBDIR)
  config = store.load_config(ckpt)
  vlm = VLM(config, jnp.float32, False, True)  # As the training run built it.
  params = store.load_params(ckpt, config)
  processor = pretrain.make_processor(config, ckpt)
  examples = demo_data.eval_examples(num_eval, 0)
  full = ev.evaluate(vlm, params, processor, examples, ev.full_selection)
  assert table["full"] == {4: full, 8: full}
  score_fn, scorer, _ = load_learned_scores(os.path.join(workdir, "scorer"),
                                            vlm)
  select = ev.scores_selection(lambda f, ctx: score_fn(ctx["scorer"], f))
  for k in (4, 8):
    got = ev.evaluate(vlm, params, processor, examples, select, k,
                      context={"scorer": scorer})
    assert got == table["AutoSelect"][k], (k, got, table["AutoSelect"])
  shown = saved["autoselect_kept"]
  assert sorted(shown) == ["4", "8"]
  images = demo_data.scale_images(np.stack([e.image for e in examples[:4]]))
  scores = score_fn(scorer, vlm.encode_image(params, images))
  for k in (4, 8):
    want = np.asarray(select_topk(scores, k))
    np.testing.assert_array_equal(np.asarray(shown[str(k)]), want)
  # Different images keep different tokens (a constant Scorer would not).
  assert len({tuple(row) for row in shown["8"]}) > 1, shown
  values = [v for row in table.values() for v in row.values()]
  # 32 examples: every entry is a count / 32.
  assert all(abs(v * num_eval - round(v * num_eval)) < 1e-9 for v in values)
