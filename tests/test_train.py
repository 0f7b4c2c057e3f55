"""`python -m autoselect_jax.train`: config checks, sharding equivalence,
multi-process training and kill/resume (subprocesses on CPU devices)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import hf_reference
from autoselect_jax.training.config import ConfigError, validate, validate_budget

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


def _args(ckpt, data, workdir, **overrides):
  base = {"model.checkpoint": ckpt, "model.dtype": "float32",
          "data.train_path": data, "data.max_text_len": 16,
          "autoselect.k": 4, "autoselect.scorer_heads": 4,
          "autoselect.denoiser_heads": 4, "batch_size": 8, "num_steps": 6,
          "log_every": 1, "eval_every": 1000, "tau.steps": 4,
          "optim.warmup_steps": 1, "optim.lr": 1e-2,
          "checkpoint.async_save": False, "distributed.initialize": "no"}
  base.update(overrides)
  return (["-m", "autoselect_jax.train", "--config",
           os.path.join(REPO, "configs/paligemma.py"), "--workdir", workdir]
          + [f"--config.{k}={v}" for k, v in base.items()])


def _env(devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run(args, devices=1, timeout=300):
  r = subprocess.run([sys.executable] + args, env=_env(devices), cwd=REPO,
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return r


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def _final_state(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path)


def _flat(tree):
  import jax
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_eight_devices_match_one(hf_mqa, dataset, tmp_path):
  ckpt = hf_mqa[3]
  one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
  _run(_args(ckpt, dataset, one, num_steps=4), devices=1)
  _run(_args(ckpt, dataset, eight, num_steps=4, **{"mesh.data": 4,
                                                   "mesh.fsdp": 2,
                                                   "sharding.trainable": "fsdp",
                                                   "sharding.frozen": "fsdp"}),
       devices=8)
  a, b = _losses(one), _losses(eight)
  assert sorted(a) == [1, 2, 3, 4] and a.keys() == b.keys()
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])
  assert a[4] != a[1]  # Training moved.
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(one, "tensorboard")))
  # The exported Scorer is the final state's Scorer.
  from autoselect_jax.checkpoints.scorer import load_scorer
  scorer, cfg = load_scorer(os.path.join(one, "scorer"))
  assert cfg["format"] == "autoselect_jax.scorer" and cfg["scorer"]["num_heads"] == 4
  final = _flat(_final_state(one, 4)["params"]["scorer"])
  got = _flat(scorer)
  assert final.keys() == got.keys()
  for k in final:
    np.testing.assert_array_equal(got[k], final[k])


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_params(hf_mqa, dataset, tmp_path):
  ckpt = hf_mqa[3]
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  over = {"num_steps": 8, "checkpoint.every": 2}
  _run(_args(ckpt, dataset, ref, **over))
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
  assert not os.path.isdir(os.path.join(ckdir, "8")), "run was not interrupted"
  r = _run(_args(ckpt, dataset, killed, **over))
  assert "resuming at step" in r.stdout
  a, b = _flat(_final_state(ref, 8)), _flat(_final_state(killed, 8))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], atol=1e-6, rtol=0, err_msg=k)
  la, lb = _losses(ref), _losses(killed)
  for step in (7, 8):  # Steps after the resume saw the same batches.
    assert abs(la[step] - lb[step]) <= 1e-6


def test_two_processes_train_together(hf_mqa, dataset, tmp_path):
  ckpt = hf_mqa[3]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / "multi")
  procs = []
  for i in range(2):
    args = _args(ckpt, dataset, workdir, num_steps=4, **{
        "distributed.initialize": "yes",
        "distributed.coordinator_address": f"127.0.0.1:{port}",
        "distributed.num_processes": 2, "distributed.process_id": i})
    procs.append(subprocess.Popen([sys.executable] + args, env=_env(),
                                  cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  finals = [next(l for l in out.splitlines() if "finished at step" in l)
            for out in outs]
  assert finals[0].startswith("process 0/2") and finals[1].startswith("process 1/2")
  assert finals[0].split(":", 1)[1] == finals[1].split(":", 1)[1]
  assert "2 devices, 2 processes" in outs[0]
  assert _losses(workdir).keys() == {1, 2, 3, 4}  # Written by process 0 only.


def test_config_errors(hf_mqa, dataset, tmp_path):
  from configs import paligemma
  c = paligemma.get_config()
  with pytest.raises(ConfigError, match=r"--config.model.checkpoint.*configs/demo.py"):
    validate(c, num_devices=1)
  c.model.checkpoint = hf_mqa[3]
  with pytest.raises(ConfigError, match=r"--config.data.train_path"):
    validate(c, num_devices=1)
  c.data.train_path = dataset
  validate(c, num_devices=1)
  c.batch_size = 12
  with pytest.raises(ConfigError, match="batch_size=12 is not divisible by the 8 devices"):
    validate(c, num_devices=8)
  c.batch_size, c.tau.end = 8, 0.0
  with pytest.raises(ConfigError, match="tau.end=0.0 must be positive"):
    validate(c, num_devices=1)
  c.tau.end, c.autoselect.k = 0.1, 300
  with pytest.raises(ConfigError, match="K=300 exceeds the model's 256 visual"):
    validate_budget(c, 256)
  c.autoselect.k, c.autoselect.k_choices = 8, "4,x"
  with pytest.raises(ConfigError, match="k_choices='4,x'"):
    validate(c, num_devices=1)


def test_cli_rejects_unknown_keys_and_missing_paths(hf_mqa, dataset, tmp_path):
  cmd = [sys.executable, "-m", "autoselect_jax.train", "--config",
         os.path.join(REPO, "configs/paligemma.py"), "--workdir",
         str(tmp_path / "w")]
  r = subprocess.run(cmd + ["--config.autoselect.kk=3"], env=_env(), cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode != 0 and "kk" in r.stderr
  r = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 2
  assert "--config.model.checkpoint" in r.stderr and "demo" in r.stderr
  r = subprocess.run(cmd + [f"--config.model.checkpoint={hf_mqa[3]}",
                            "--config.data.train_path=/nonexistent.jsonl"],
                     env=_env(), cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 2 and "/nonexistent.jsonl does not exist" in r.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints" / "1")


@pytest.mark.slow
def test_demo_pipeline_end_to_end_shortened(tmp_path):
  """configs/demo.py in miniature: pre-train (then cache), train, report."""
  workdir = str(tmp_path / "demo")
  args = ["-m", "autoselect_jax.train", "--config",
          os.path.join(REPO, "configs/demo.py"), "--workdir", workdir,
          "--config.demo.pretrain_steps=3", "--config.demo.num_train=256",
          "--config.demo.pretrain_batch_size=16", "--config.batch_size=16",
          "--config.num_steps=3", "--config.log_every=1",
          "--config.eval_every=3", "--config.eval_batches=1",
          "--config.demo.num_val=32", "--config.demo.num_eval=32",
          "--config.demo.budgets=4,8", "--config.checkpoint.async_save=False"]
  out = _run(args, timeout=600).stdout
  assert "pretrain: saved" in out
  assert "val: loss_topk=" in out
  table = json.load(open(os.path.join(workdir, "demo_table.json")))["table"]
  assert set(table) == {"full", "AutoSelect", "random", "oracle"}
  for row in table.values():
    assert set(row) == {"4", "8"} and all(0 <= v <= 1 for v in row.values())
  assert os.path.exists(os.path.join(workdir, "scorer", "scorer_config.json"))
  again = _run(args, timeout=600).stdout  # Cached VLM, finished training.
  assert "cache hit" in again and "pretrain: saved" not in again
  assert "| AutoSelect |" in again
