"""A URL workdir (gs://bucket/run, the TPU pod case): a real training run
writes its metrics, TensorBoard events, Orbax checkpoints and Scorer export
there, resumes from it, and writes nothing to a local 'gs:' folder; without
gcsfs the run fails up front naming the package.

There is no GCS here: tests/fake_gcs.py serves gs:// in this process, to
epath (an fsspec filesystem where gcsfs would be; EPATH_USE_TF=false) and to
TensorStore (a local HTTP server speaking the GCS JSON API subset it uses),
over one in-memory store. The project's code and epath's, Orbax's and
TensorStore's gs:// code run unchanged; stubbed are Google's credentials
(GOOGLE_AUTH_TOKEN_FOR_TESTING) and google-cloud-storage's bucket lookup,
which Orbax makes to ask whether a bucket has a hierarchical namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import fake_gcs
from test_train import (BASE, REPO, _env, _final_state, _flat,  # noqa: F401
                        dataset)

URL = "gs://bucket/run"


@pytest.fixture(scope="module")
def gcs_server():
  server = fake_gcs.serve()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()


def _clear_epath_cache():
  from etils.epath import backend
  backend.fsspec_backend._get_filesystem.cache_clear()


@pytest.fixture
def gcs(monkeypatch, tmp_path, gcs_server):
  """gs:// served by fake_gcs (both doors); cwd is an empty tmp folder that
  must stay free of 'gs:' folders. Yields the store ('bucket/run/...')."""
  from orbax.checkpoint._src.path import gcs_utils
  registry = sys.modules["fsspec.registry"]._registry
  for name in ("gs", "gcs"):
    monkeypatch.setitem(registry, name, fake_gcs.FakeGCS)
  monkeypatch.setenv("EPATH_USE_TF", "false")
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", gcs_server)
  monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake-token")
  monkeypatch.setattr(gcs_utils, "get_bucket", lambda name: types.
                      SimpleNamespace(hierarchical_namespace_enabled=False))
  fake_gcs.reset()
  monkeypatch.chdir(tmp_path)
  _clear_epath_cache()
  yield fake_gcs.FakeGCS.store
  _clear_epath_cache()
  assert not [f for f in os.listdir(tmp_path) if f.startswith("gs")]


def _read(store, key) -> bytes:
  return bytes(store[key].getbuffer())


def _keys(store, prefix):
  return sorted(k for k in store if k.startswith(prefix))


# --- up-front errors ----------------------------------------------------------
def test_url_without_its_package_fails_up_front(monkeypatch, tmp_path):
  """No gcsfs, no TensorFlow: the workdir check names the URL and the
  package, and train() raises it before reading the (missing) VLM."""
  from autoselect_jax.training import config, loop
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # Not importable.
  monkeypatch.setenv("EPATH_USE_TF", "false")
  monkeypatch.chdir(tmp_path)
  with pytest.raises(config.ConfigError) as e:
    config.validate_workdir(URL)
  assert URL in str(e.value) and "pip install gcsfs" in str(e.value)
  assert e.value.field == "workdir"
  from configs import paligemma
  c = paligemma.get_config()
  c.model.checkpoint = str(tmp_path / "no_such_checkpoint")
  with pytest.raises(config.ConfigError, match="gcsfs"):
    loop.train(c, URL)
  for url in ("s3://bucket/run", "ftp://host/run"):  # Orbax: GCS or local.
    with pytest.raises(config.ConfigError, match="unsupported URL scheme"):
      config.validate_workdir(url)
  assert os.listdir(tmp_path) == []


def test_cli_says_what_to_install(tmp_path):
  """`python -m autoselect_jax.train --workdir gs://...` without gcsfs: a
  one-line error (exit 2), no traceback, no local 'gs:' folder."""
  script = ("import sys; sys.modules['gcsfs'] = None; "
            "from absl import app; from autoselect_jax import train; "
            "app.run(train.main, flags_parser=train._parse_flags)")
  env = dict(_env(), EPATH_USE_TF="false")
  r = subprocess.run(
      [sys.executable, "-c", script, "--config",
       os.path.join(REPO, "configs/paligemma.py"), "--workdir", URL],
      env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-3000:]
  assert r.stderr.strip().splitlines()[-1] == (
      f"train: error: --workdir {URL}: writing to gs:// needs the gcsfs "
      "package, which is not installed here (pip install gcsfs)")
  assert os.listdir(tmp_path) == []


def test_url_inputs_are_named_as_urls(tmp_path):
  """model.checkpoint / data paths are read from local disk: a URL there is
  said to be one (not 'does not exist')."""
  from autoselect_jax.training import config
  from configs import paligemma
  c = paligemma.get_config()
  c.model.checkpoint = "gs://bucket/ckpt"
  with pytest.raises(config.ConfigError, match="is a URL") as e:
    config.validate(c, num_devices=1)
  assert e.value.field == "model.checkpoint"
  c.model.checkpoint, c.data.train_path = str(tmp_path), "gs://bucket/t.jsonl"
  with pytest.raises(config.ConfigError, match="is a URL") as e:
    config.validate(c, num_devices=1)
  assert e.value.field == "data.train_path"


# --- the writers one by one ---------------------------------------------------
def test_scorer_export_to_a_url_round_trips(gcs):
  from autoselect_jax.checkpoints.scorer import export_scorer, load_scorer
  cfg = {"format": "autoselect_jax.scorer", "version": 1, "scorer": {}}
  out = URL + "/scorer"
  export_scorer(out, {"w": np.ones((2, 3), np.float32)}, cfg)
  export_scorer(out, {"w": np.full((2, 3), 2.0, np.float32)}, cfg)
  params, got = load_scorer(out)
  np.testing.assert_array_equal(params["w"], 2.0)
  assert got == cfg
  assert _keys(gcs, "bucket/run/") == [
      "bucket/run/scorer/scorer.safetensors",
      "bucket/run/scorer/scorer_config.json"]


def test_interrupted_url_export_reads_as_missing(gcs, monkeypatch):
  """The config goes last: an export that dies after the params leaves no
  config, so readers see no Scorer rather than a new/old mix."""
  from etils import epath
  from autoselect_jax.checkpoints.scorer import export_scorer, load_scorer
  cfg = {"format": "autoselect_jax.scorer", "version": 1, "scorer": {}}
  out = URL + "/scorer"
  export_scorer(out, {"w": np.ones((2, 3), np.float32)}, cfg)

  def fail(self, *a, **k):
    raise OSError("connection lost")
  monkeypatch.setattr(type(epath.Path(out)), "write_text", fail)
  with pytest.raises(OSError, match="connection lost"):
    export_scorer(out, {"w": np.full((2, 3), 2.0, np.float32)}, cfg)
  assert _keys(gcs, "bucket/run/") == [
      "bucket/run/scorer/scorer.safetensors"]  # The new params, no config.
  with pytest.raises(FileNotFoundError, match="scorer_config.json is missing"):
    load_scorer(out)


def test_metrics_are_uploaded_whole_and_appended_on_resume(gcs):
  from autoselect_jax.training.metrics import MetricWriter
  w = MetricWriter(URL, 10, enabled=True, sync_every_s=3600)
  staging = w._mirror.local
  w.write(1, {"loss": 1.5})
  assert not gcs  # Not yet an hour: nothing uploaded.
  w.close()
  assert not os.path.exists(staging)
  rows = [json.loads(l) for l in
          _read(gcs, "bucket/run/metrics.jsonl").decode().splitlines()]
  assert rows == [{"step": 1, "split": "train", "loss": 1.5}]
  events = _keys(gcs, "bucket/run/tensorboard/events.out.tfevents")
  assert len(events) == 1 and len(_read(gcs, events[0])) > 0
  w = MetricWriter(URL, 10, enabled=True, sync_every_s=0)  # A resumed run.
  w.write(2, {"loss": 1.0})
  text = _read(gcs, "bucket/run/metrics.jsonl").decode()  # Synced.
  assert [json.loads(l)["step"] for l in text.splitlines()] == [1, 2]
  w.close()
  quiet = MetricWriter(URL, 10, enabled=False)  # Other processes.
  quiet.write(3, {"loss": 0.5})
  quiet.close()
  assert _read(gcs, "bucket/run/metrics.jsonl").decode() == text


def test_checkpointer_keeps_a_url(gcs):
  """TrainCheckpointer hands Orbax the URL (no abspath); Orbax creates and
  lists it through epath."""
  from autoselect_jax.training.checkpoint import TrainCheckpointer
  ckptr = TrainCheckpointer(URL + "/checkpoints", async_save=False)
  try:
    assert ckptr.directory == URL + "/checkpoints"
    assert str(ckptr.manager.directory) == URL + "/checkpoints"
    assert ckptr.latest_step() is None
    assert "bucket/run/checkpoints" in fake_gcs.FakeGCS.pseudo_dirs
  finally:
    ckptr.close()


# --- a training run -----------------------------------------------------------
def _config(ckpt, data, **overrides):
  from configs import paligemma
  c = paligemma.get_config()
  c.update_from_flattened_dict({"model.checkpoint": ckpt,
                                "data.train_path": data, **BASE, **overrides})
  return c


def _steps(store):
  """Checkpoint steps Orbax finished (committed) under URL/checkpoints."""
  return sorted(int(k.split("/")[3]) for k in
                _keys(store, "bucket/run/checkpoints/")
                if k.endswith("/commit_success.txt") and k.count("/") == 4)


def test_training_run_writes_its_url_workdir(gcs, hf_mqa, dataset,  # noqa: F811
                                             capsys):
  """4 steps, then resumed from the URL's checkpoint to 6 (keeping 1): both
  runs' metrics, their TensorBoard event files, step 6's checkpoint and the
  final Scorer, all read back from gs://bucket/run."""
  from autoselect_jax.checkpoints.scorer import load_scorer
  from autoselect_jax.training import loop
  first = loop.train(_config(hf_mqa[3], dataset, num_steps=4), URL)
  assert _steps(gcs) == [4]
  second = loop.train(_config(hf_mqa[3], dataset, num_steps=6,
                              **{"checkpoint.keep": 1}), URL)
  out = capsys.readouterr().out
  assert "resuming at step 4" in out and second["step"] == 6
  assert _steps(gcs) == [6]  # Step 4 deleted on GCS (keep=1).
  assert first["scorer_dir"] == second["scorer_dir"] == URL + "/scorer"
  rows = [json.loads(l) for l in
          _read(gcs, "bucket/run/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4,
                                                                 5, 6]
  assert len(_keys(gcs, "bucket/run/tensorboard/events.out")) == 2
  state = _flat(_final_state(URL, 6)["params"]["scorer"])
  params, cfg = load_scorer(URL + "/scorer")
  assert cfg["format"] == "autoselect_jax.scorer"
  exported = _flat(params)
  assert state.keys() == exported.keys()
  for k in state:
    np.testing.assert_array_equal(exported[k], state[k])
  trained = _flat(second["params"]["scorer"])
  assert any(not np.array_equal(trained[k], _flat(first["params"]["scorer"])
                                [k]) for k in trained)
  assert {k.split("/")[2] for k in gcs} == {
      "metrics.jsonl", "tensorboard", "checkpoints", "scorer"}
