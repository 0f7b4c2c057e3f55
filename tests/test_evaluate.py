"""`evaluate`: the runner (resume after a crash or a kill, run.json checks),
re-scoring, the retention report, and the synthetic benchmark end to end."""

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
from autoselect_jax.evaluation import report as report_lib
from autoselect_jax.evaluation import runner
from autoselect_jax.evaluation.benchmarks import synthetic
from autoselect_jax.evaluation.registry import get_benchmark
from autoselect_jax.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "seed=3,count=10,start=100"


class FakeModel:
  """Answers with the target caption for even indices, a wrong one for odd;
  records every batch it sees."""

  def __init__(self, fail_after=None):
    self.batches, self.fail_after = [], fail_after
    self.targets = {e.key: e.target for e in
                    get_benchmark("synthetic").load(DATA)}

  def factory(self):
    def fn(images, prompts, max_new_tokens):
      assert len(images) == len(prompts) == 4  # Padded to the batch size.
      assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8
                 for im in images)
      if self.fail_after is not None and len(self.batches) == self.fail_after:
        raise KeyboardInterrupt  # Stands in for a kill between batches.
      # The model cannot see keys; identify examples by their pixels.
      out = []
      for im in images:
        key = self.lookup[im.tobytes()]
        ok = key % 2 == 0
        out.append({"text": self.targets[key] if ok else "red circle",
                    "kept": [0, 1]})
      self.batches.append(len(images))
      return out
    return fn, 32

  def index(self, spec):
    self.lookup = {}
    for e, im in zip(get_benchmark("synthetic").load(DATA),
                     runner._load_batch(get_benchmark("synthetic").load(DATA),
                                        32)):
      self.lookup[im.tobytes()] = e.key


def _spec(**kw):
  return runner.RunSpec(checkpoint="ckpt", benchmark="synthetic",
                        method="random", k=4, data=DATA, batch_size=4, **kw)


def _lines(out):
  with open(os.path.join(out, runner.PREDICTIONS_FILE)) as f:
    return [json.loads(l) for l in f]


def test_run_writes_predictions_metrics_and_run_file(tmp_path):
  model = FakeModel()
  model.index(None)
  out = str(tmp_path / "run")
  m = runner.run(_spec(), out, generate=model.factory,
                 progress_stream=open(os.devnull, "w"))
  lines = _lines(out)
  assert [l["index"] for l in lines] == list(range(100, 110))
  assert all(set(l) == {"index", "prompt", "answer", "kept"} for l in lines)
  assert m["score"] == m["metrics"]["accuracy"] == 50.0  # Even keys right.
  assert m["method"] == "random" and m["k"] == 4
  with open(os.path.join(out, runner.METRICS_FILE)) as f:
    assert json.load(f) == m
  with open(os.path.join(out, runner.RUN_FILE)) as f:
    run = json.load(f)
  assert run["spec"]["k"] == 4 and run["num_examples"] == 10
  assert "jax" in run["versions"]
  assert model.batches == [4, 4, 4]  # 10 examples: the last batch padded.


def test_crash_and_torn_line_resume_without_duplicates_or_drops(tmp_path):
  out = str(tmp_path / "run")
  crashing = FakeModel(fail_after=2)
  crashing.index(None)
  with pytest.raises(KeyboardInterrupt):
    runner.run(_spec(), out, generate=crashing.factory,
               progress_stream=open(os.devnull, "w"))
  assert len(_lines(out)) == 8
  with open(os.path.join(out, runner.PREDICTIONS_FILE), "a") as f:
    f.write('{"index": 108, "prom')  # A kill in the middle of a write.
  assert not os.path.exists(os.path.join(out, runner.METRICS_FILE))
  model = FakeModel()
  model.index(None)
  m = runner.run(_spec(), out, generate=model.factory,
                 progress_stream=open(os.devnull, "w"))
  assert model.batches == [4]  # Only the 2 missing examples (padded) ran.
  assert [l["index"] for l in _lines(out)] == list(range(100, 110))
  assert m["score"] == 50.0
  # A finished run is not run again.
  again = FakeModel()
  assert runner.run(_spec(), out, generate=again.factory) == m
  assert again.batches == []


def test_resume_with_other_arguments_names_the_fields(tmp_path):
  model = FakeModel(fail_after=1)
  model.index(None)
  out = str(tmp_path / "run")
  with pytest.raises(KeyboardInterrupt):
    runner.run(_spec(), out, generate=model.factory,
               progress_stream=open(os.devnull, "w"))
  with pytest.raises(ValueError, match=r"k: 4 before, 8 now"):
    runner.run(runner.RunSpec(checkpoint="ckpt", benchmark="synthetic",
                              method="random", k=8, data=DATA, batch_size=4),
               out, generate=model.factory)


def test_predictions_of_another_run_are_refused(tmp_path):
  out = tmp_path / "run"
  out.mkdir()
  (out / runner.PREDICTIONS_FILE).write_text('{"index": 5, "answer": "x"}\n')
  with pytest.raises(ValueError, match="index=5 is not an example"):
    runner.run(_spec(), str(out), generate=FakeModel().factory)


def test_score_and_report(tmp_path):
  bench = get_benchmark("synthetic")
  examples = bench.load(DATA)
  pred = tmp_path / "pred.jsonl"
  pred.write_text("".join(
      json.dumps({"index": e.key, "answer": e.target if i < 6 else "no"}) + "\n"
      for i, e in enumerate(examples)))
  out = tmp_path / "m.json"
  assert evaluate.main(["score", "--benchmark", "synthetic", "--data", DATA,
                        "--predictions", str(pred), "--out", str(out)]) == 0
  assert json.loads(out.read_text())["metrics"]["accuracy"] == 60.0
  # A predictions file that misses examples is an error, not a lower score.
  assert evaluate.main(["score", "--benchmark", "synthetic", "--data",
                        "seed=3,count=11,start=100", "--predictions",
                        str(pred)]) == 2

  def fake_run(name, method, k, bench_name, score):
    d = tmp_path / name
    d.mkdir()
    (d / runner.METRICS_FILE).write_text(json.dumps(
        {"benchmark": bench_name, "method": method, "k": k, "score": score,
         "headline": "accuracy", "metrics": {"accuracy": score}}))
    return str(d)

  dirs = [fake_run("f1", "full", None, "synthetic", 80.0),
          fake_run("f2", "full", None, "mme", 1500.0),
          fake_run("a1", "autoselect", 8, "synthetic", 72.0),
          fake_run("a2", "autoselect", 8, "mme", 1200.0),
          fake_run("r1", "random", 8, "synthetic", 40.0)]
  md = str(tmp_path / "rep" / "report.md")
  assert evaluate.main(["report", *dirs, "--out", md]) == 0
  table = json.loads(open(md[:-3] + ".json").read())
  rows = {(r["method"], r["k"]): r for r in table["rows"]}
  assert table["rows"][0]["method"] == "full"
  assert rows[("full", None)]["average_retention"] == 100.0
  a = rows[("autoselect", 8)]
  assert a["retention"] == {"synthetic": 90.0, "mme": 80.0}
  assert a["average_retention"] == pytest.approx(85.0)
  assert rows[("random", 8)]["average_retention"] == 50.0
  text = open(md).read()
  assert "| autoselect | 8 | 1200.00 (80.0%) | 72.00 (90.0%) | 85.0% |" in text
  with pytest.raises(ValueError, match="both autoselect k=8 on mme"):
    report_lib.load_runs(dirs + [fake_run("a3", "autoselect", 8, "mme", 1.0)])
  with pytest.raises(FileNotFoundError, match="no metrics.json"):
    report_lib.load_runs([str(tmp_path)])


def test_synthetic_data_spec_and_errors():
  assert synthetic.parse_data(None) == (0, 10_000_000, 500)
  assert synthetic.parse_data("seed=2,count=5") == (2, 10_000_000, 5)
  for bad in ("seed=1", "count=x,seed=1", "foo=1,seed=1,count=2",
              "seed=1,count=0"):
    with pytest.raises(ValueError, match="synthetic --data"):
      synthetic.parse_data(bad)
  bench = get_benchmark("synthetic")
  assert len(bench.load(DATA, limit=3)) == 3
  with pytest.raises(ValueError, match="no prediction"):
    bench.score(bench.load(DATA), {})


def test_progress_rate_and_eta():
  t = [0.0]
  lines = []

  class Stream:
    def write(self, s):
      lines.append(s)

    def flush(self):
      pass

  bar = Progress(100, "eval", initial=20, stream=Stream(), every_s=0,
                 clock=lambda: t[0])
  t[0] = 10.0
  bar.update(40)  # 40 items in 10 s: 4/s, 40 left -> 10 s.
  assert "60/100" in lines[-1] and "4.0 ex/s" in lines[-1]
  assert "ETA 00:10" in lines[-1]
