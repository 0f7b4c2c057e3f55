"""`evaluate run` on a real (tiny, random) converted PaliGemma: every method
from the CLI, the report over them, pictures, the batch split over 8 CPU
devices against 1, and a run killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from autoselect_jax import evaluate
from autoselect_jax.evaluation import runner
from autoselect_jax.inference.pruners import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 6


def _args(ckpt, out, method, data, *, scorer=None, batch=2, new=4):
  a = ["run", "--checkpoint", ckpt, "--method", method, "--benchmark",
       "synthetic", "--data", data, "--batch-size", str(batch),
       "--max-new-tokens", str(new), "--fastv-layer", "1", "--out", out]
  if method != "full":
    a += ["--k", str(K)]
  if scorer:
    a += ["--scorer", scorer]
  return a


def _predictions(out):
  with open(os.path.join(out, runner.PREDICTIONS_FILE)) as f:
    return [json.loads(line) for line in f]


def test_every_method_runs_from_the_cli_and_reports(hf_mqa, mqa_scorer,
                                                    tmp_path):
  ckpt = hf_mqa[3]
  dirs = []
  for m in METHODS:
    out = str(tmp_path / m)
    rc = evaluate.main(_args(ckpt, out, m, "seed=1,count=3", scorer=(
        mqa_scorer if m == "autoselect" else None)))
    assert rc == 0, m
    rows = _predictions(out)
    assert [r["index"] for r in rows] == list(range(10_000_000, 10_000_003))
    for r in rows:
      kept = np.asarray(r["kept"])
      assert len(kept) == (16 if m == "full" else K), m
      assert (np.diff(kept) > 0).all() and kept.min() >= 0 and kept.max() < 16
    metrics = json.load(open(os.path.join(out, runner.METRICS_FILE)))
    assert metrics["method"] == m and metrics["k"] == (
        None if m == "full" else K)
    dirs.append(out)
  md = str(tmp_path / "report.md")
  assert evaluate.main(["report", *dirs, "--out", md]) == 0
  table = json.load(open(md[:-3] + ".json"))
  assert [(r["method"], r["k"]) for r in table["rows"]][0] == ("full", None)
  assert {r["method"] for r in table["rows"]} == set(METHODS)


def test_bad_run_arguments_exit_2_with_the_reason(hf_mqa, mqa_scorer,
                                                  tmp_path, capsys):
  ckpt = hf_mqa[3]
  cases = [
      (["--method", "nope"], "unknown method 'nope'"),
      (["--method", "full", "--k", "4"], "method 'full' keeps all N"),
      (["--method", "grid"], "needs k"),
      (["--method", "norm", "--k", "4", "--scorer", mqa_scorer],
       "only it uses one"),
      (["--method", "fastv", "--k", "4", "--fastv-layer", "2"],
       r"fastv_layer must be an int in \[1, 2\)"),
  ]
  for extra, match in cases:
    rc = evaluate.main(["run", "--checkpoint", ckpt, "--benchmark",
                        "synthetic", "--data", "seed=1,count=2", "--out",
                        str(tmp_path / "bad"), *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert __import__("re").search(match, err), (extra, err)


def test_save_vis_draws_the_kept_patches_and_scores(hf_mqa, tmp_path):
  from PIL import Image
  out, vis = str(tmp_path / "run"), str(tmp_path / "vis")
  assert evaluate.main(_args(hf_mqa[3], out, "norm", "seed=2,count=3") + [
      "--save-vis", vis, "--vis-count", "2"]) == 0
  assert sorted(os.listdir(vis)) == ["10000000.png", "10000001.png"]
  with Image.open(os.path.join(vis, "10000000.png")) as im:
    assert im.size[0] >= 256 and im.size[1] >= 256  # Selection + heat map.


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def test_eight_devices_give_the_predictions_of_one(hf_mqa, tmp_path):
  """The batch is sharded over all local devices; the answers and kept
  tokens are those of one device (a 10-example run: one full batch of 8 and
  one padded one)."""
  ckpt = hf_mqa[3]
  one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
  args = _args(ckpt, one, "divprune", "seed=4,count=10", batch=8, new=6)
  assert evaluate.main(args) == 0
  code = ("import jax, sys; assert jax.local_device_count() == 8; "
          "from autoselect_jax import evaluate; "
          "sys.exit(evaluate.main(sys.argv[1:]))")
  proc = subprocess.run(
      [sys.executable, "-c", code,
       *_args(ckpt, eight, "divprune", "seed=4,count=10", batch=8, new=6)],
      env=_env(8), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  strip = lambda rows: [(r["index"], r["answer"], r["kept"]) for r in rows]
  assert strip(_predictions(eight)) == strip(_predictions(one))


# Run in the child: the loader of the 5th batch (prefetched while the 4th is
# generated) signals through a file and blocks, so the SIGKILL lands mid-run
# on any machine, however fast, with 6 to 8 of the 24 answers written.
_BLOCK_FIFTH_BATCH = """
import os, sys, threading
from autoselect_jax import evaluate
from autoselect_jax.evaluation import runner
load, calls = runner._load_batch, []
def blocking(examples, size):
  calls.append(1)
  if len(calls) == 5:
    open(os.environ["AUTOSELECT_TEST_MARKER"], "w").close()
    threading.Event().wait()
  return load(examples, size)
runner._load_batch = blocking
sys.exit(evaluate.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(hf_mqa, tmp_path):
  ckpt = hf_mqa[3]
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  data = "seed=5,count=24"
  assert evaluate.main(_args(ckpt, whole, "random", data, batch=2)) == 0
  args = _args(ckpt, killed, "random", data, batch=2)
  marker = str(tmp_path / "blocked")
  proc = subprocess.Popen(
      [sys.executable, "-c", _BLOCK_FIFTH_BATCH, *args],
      env={**_env(1), "AUTOSELECT_TEST_MARKER": marker},
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  path = os.path.join(killed, runner.PREDICTIONS_FILE)
  deadline = time.time() + 300
  while not os.path.exists(marker):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, "the child never reached its 5th batch"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = open(path).read().count("\n")
  assert 6 <= done <= 8, done
  assert not os.path.exists(os.path.join(killed, runner.METRICS_FILE))
  resumed = subprocess.run(
      [sys.executable, "-m", "autoselect_jax.evaluate", *args], env=_env(1),
      capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert _predictions(killed) == _predictions(whole)
  assert json.load(open(os.path.join(killed, runner.METRICS_FILE))) == \
      json.load(open(os.path.join(whole, runner.METRICS_FILE)))
