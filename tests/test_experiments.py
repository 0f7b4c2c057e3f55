"""The controlled experiment: its summary arithmetic, and the shortened run
end to end (pipeline, files, resume), as CI runs it."""

from __future__ import annotations

import json
import os

import pytest

from autoselect_jax.experiments import summary
from autoselect_jax.experiments import synthetic as experiment


def test_aggregate_mean_and_sample_std_over_seeds():
  per_seed = {0: {"full": {"4": 0.9, "8": 0.9}, "AutoSelect": {"4": 0.5,
                                                               "8": 0.7},
                  "_seconds": {"x": 1.0}},
              1: {"full": {"4": 0.8, "8": 0.8}, "AutoSelect": {"4": 0.7,
                                                               "8": 0.8}}}
  agg = summary.aggregate(per_seed)
  assert set(agg) == {"full", "AutoSelect"}  # Bookkeeping keys skipped.
  c = agg["AutoSelect"]["4"]
  assert c["mean"] == pytest.approx(0.6) and c["n"] == 2
  assert c["std"] == pytest.approx(0.1414213, abs=1e-6)  # ddof=1
  assert summary.aggregate({0: per_seed[0]})["full"]["8"]["std"] == 0.0
  md = summary.markdown(agg, "t")
  assert "| AutoSelect | 0.600 ± 0.141 | 0.750 ± 0.071 |" in md
  assert "| AutoSelect / full | 70.6% | 88.2% |" in md  # 0.6/0.85, 0.75/0.85


def test_variants_are_compared_seed_by_seed():
  per_seed = {0: {"AutoSelect": {"8": 0.6}, "no noise": {"8": 0.5},
                  "oracle": {"8": 0.9}},
              1: {"AutoSelect": {"8": 0.8}, "no noise": {"8": 0.8}},
              2: {"AutoSelect": {"8": 0.2}}}  # No variant: not compared.
  d = summary.paired_differences(per_seed)
  assert set(d) == {"no noise"}  # Baselines are not variants.
  assert d["no noise"]["8"]["mean"] == pytest.approx(-0.05)
  assert d["no noise"]["8"]["n"] == 2
  assert "| no noise | -0.050 ± 0.071 | 2 |" in summary.paired_markdown(d)


def test_rows_are_ordered_full_autoselect_variants_baselines():
  assert summary.ordered(["random", "packed", "full", "oracle", "AutoSelect",
                          "no noise"]) == [
      "full", "AutoSelect", "packed", "no noise", "oracle", "random"]


def test_unknown_names_fail_before_any_work(tmp_path, capsys):
  for args in (["--tasks", "medium"], ["--variants", "AutoSelect,bogus"],
               ["--set", "demo.no_such=1"]):
    with pytest.raises(SystemExit) as e:
      experiment.main(["--out", str(tmp_path), *args])
    assert e.value.code == 2
  err = capsys.readouterr().err
  assert "medium" in err and "bogus" in err and "demo.no_such" in err
  assert not os.listdir(tmp_path)


def test_report_only_needs_measured_rows(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    experiment.main(["--out", str(tmp_path), "--tasks", "hard",
                     "--report-only"])
  assert e.value.code == 2
  assert "no measured rows for task hard" in capsys.readouterr().err


def test_every_variant_is_a_valid_training_config():
  from autoselect_jax.training.client import load_client
  from autoselect_jax.training.config import validate
  for name in experiment.VARIANTS:
    for task in experiment.TASKS:
      c = experiment.seed_config({}, task, 1, name)
      validate(c, num_devices=1, client=load_client(c.client))


@pytest.mark.slow
def test_quick_run_writes_tables_and_plots_and_resumes(tmp_path, monkeypatch):
  out = str(tmp_path / "exp")
  args = ["--seeds", "0", "--out", out, "--quick", "--tasks", "hard",
          "--variants", "AutoSelect"]
  assert experiment.main(args) == 0
  table = json.load(open(os.path.join(out, "hard", "seed0", "table.json")))
  methods = {"full", "AutoSelect", *summary.BASELINE_ORDER}
  assert methods <= set(table)
  assert all(set(table[m]) == {"4", "8", "16"} for m in methods)
  assert all(0.0 <= v <= 1.0 for m in methods for v in table[m].values())
  result = json.load(open(os.path.join(out, "results.json")))
  assert result["tasks"]["hard"]["seeds"] == [0]
  assert result["settings"]["demo.pretrain_steps"] == 6
  for name in ("results.md", "accuracy_vs_k_hard.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0

  # Resume: a second call with one more variant trains only that one and
  # re-measures no baseline.
  from autoselect_jax.demo import evaluate as demo_eval
  from autoselect_jax.training import loop
  trained, measured = [], []
  train, table_fn = loop.train, demo_eval.selection_table
  monkeypatch.setattr(loop, "train", lambda c, workdir, client: (
      trained.append(os.path.basename(workdir)) or train(c, workdir, client)))
  monkeypatch.setattr(demo_eval, "selection_table", lambda *a, **k: (
      measured.append(list(a[5])) or table_fn(*a, **k)))
  assert experiment.main([*args[:-1], "AutoSelect,packed"]) == 0
  assert trained == ["packed"] and measured == [["packed"]]
  assert os.path.getsize(os.path.join(out, "ablations_hard.png")) > 0
  md = open(os.path.join(out, "results.md")).read()
  assert "| packed |" in md

  # --report-only summarises what is there and trains nothing.
  os.remove(os.path.join(out, "results.md"))
  trained.clear()
  assert experiment.main([*args[:-2], "--report-only"]) == 0
  assert trained == [] and "| packed |" in open(
      os.path.join(out, "results.md")).read()
