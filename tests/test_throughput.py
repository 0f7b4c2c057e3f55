"""bench --throughput: one jitted call from pixels to T greedy tokens per
(batch, K), its JSON, the memory fit and the argument checks."""

from __future__ import annotations

import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import bench
from autoselect_jax.benchmarks import memory_fit, throughput, weights
from autoselect_jax.benchmarks.stages import batch_inputs
from autoselect_jax.inference import decode, prune
from autoselect_jax.models import VLM, get_variant

N, T_PROMPT, NEW, BUDGET_GB = 16, 4, 3, 0.01
TOP_KEYS = [
    "variant", "command", "benchmark", "device", "platform", "dtype",
    "layer_layout", "n_visual", "n_text", "new_tokens", "repeats",
    "llm_layers", "vision_layers", "scorer_width", "kv_bytes_per_slot",
    "process_peak_source", "host_allocator", "definitions", "records", "max_batch", "complete"]
RECORD_KEYS = [
    "k", "pruned", "batch", "n_visual", "n_text", "new_tokens", "cache_slots",
    "kv_cache_bytes_per_request", "kv_cache_bytes_per_batch", "total_s",
    "total_s_min", "total_s_max", "first_token_s", "first_token_s_min",
    "first_token_s_max", "decode_s", "requests_per_s", "tokens_per_s",
    "decode_tokens_per_s", "compiled_memory", "process_peak_bytes",
    "tokens_per_s_vs_full"]
MEMORY_KEYS = ["argument_bytes", "output_bytes", "temp_bytes", "total_bytes"]


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
  """The tiny model (N = 16), K = 4, batch 1 and 2, 3 new tokens, 2 rounds,
  a 10 MB budget."""
  out = tmp_path_factory.mktemp("throughput") / "tp.json"
  argv = ["--throughput", "--variant", "tiny", "--k", "4", "--batch", "1,2",
          "--n-text", str(T_PROMPT), "--new-tokens", str(NEW), "--repeats",
          "2", "--memory-budget-gb", str(BUDGET_GB), "--out", str(out)]
  assert bench.main(argv) == 0
  with open(out) as f:
    return json.load(f)


def test_json_keys_and_records(tp_run):
  res = tp_run
  assert list(res) == TOP_KEYS and res["complete"] is True
  assert res["benchmark"] == "throughput" and res["variant"] == "tiny"
  assert res["command"].startswith(
      "python -m autoselect_jax.bench --throughput --variant tiny")
  assert (res["n_visual"], res["n_text"], res["new_tokens"]) == (N, T_PROMPT,
                                                                 NEW)
  # Per batch the full model first, then each K.
  assert [(r["batch"], r["k"], r["pruned"]) for r in res["records"]] == [
      (1, N, False), (1, 4, True), (2, N, False), (2, 4, True)]
  for r in res["records"]:
    assert list(r) == RECORD_KEYS
    assert list(r["compiled_memory"]) == MEMORY_KEYS
    assert r["process_peak_bytes"] > 0
  assert res["process_peak_source"] == (
      "process peak RSS" if jax.devices()[0].platform == "cpu"
      else "device peak_bytes_in_use")


def test_rates_are_work_over_time(tp_run):
  for r in tp_run["records"]:
    b = r["batch"]
    for name in ("total_s", "first_token_s"):
      assert 0 < r[f"{name}_min"] <= r[name] <= r[f"{name}_max"]
    assert r["decode_s"] == pytest.approx(r["total_s"] - r["first_token_s"])
    assert r["requests_per_s"] == pytest.approx(b / r["total_s"])
    assert r["tokens_per_s"] == pytest.approx(b * NEW / r["total_s"])
    if r["decode_s"] > 0:
      assert r["decode_tokens_per_s"] == pytest.approx(
          b * (NEW - 1) / r["decode_s"])
    else:
      assert r["decode_tokens_per_s"] is None
    full = next(f for f in tp_run["records"]
                if f["batch"] == b and not f["pruned"])
    assert r["tokens_per_s_vs_full"] == pytest.approx(
        r["tokens_per_s"] / full["tokens_per_s"])


def test_kv_cache_bytes_follow_the_config(tp_run):
  llm = get_variant("tiny").llm
  per_slot = llm.depth * 2 * llm.num_kv_heads * llm.head_dim * 4  # float32
  assert tp_run["kv_bytes_per_slot"] == per_slot
  by = {(r["batch"], r["k"]): r for r in tp_run["records"]}
  for (b, k), r in by.items():
    assert r["cache_slots"] == k + T_PROMPT + NEW
    assert r["kv_cache_bytes_per_request"] == per_slot * r["cache_slots"]
    assert r["kv_cache_bytes_per_batch"] == b * r["kv_cache_bytes_per_request"]
    m = r["compiled_memory"]
    assert 0 < m["total_bytes"] <= (m["argument_bytes"] + m["output_bytes"]
                                    + m["temp_bytes"])
    assert m["output_bytes"] == b * NEW * 4        # The tokens, int32.
  for b in (1, 2):
    assert (by[(b, 4)]["kv_cache_bytes_per_request"]
            < by[(b, N)]["kv_cache_bytes_per_request"])


def test_max_batch_is_the_two_point_fit_against_the_budget(tp_run):
  block = tp_run["max_batch"]
  budget = BUDGET_GB * 1e9
  assert block["budget_bytes"] == budget
  assert block["budget_source"] == "--memory-budget-gb"
  assert block["fit_batches"] == [1, 2]
  entries = {e["k"]: e for e in block["entries"]}
  assert sorted(entries) == [4, N]
  records = {(r["batch"], r["k"]): r for r in tp_run["records"]}
  for k, e in entries.items():
    (p1, p2) = e["points"]
    assert (p1["batch"], p2["batch"]) == (1, 2)
    slope = p2["total_bytes"] - p1["total_bytes"]
    assert e["slope_bytes_per_request"] == slope > 0
    assert e["intercept_bytes"] == p1["total_bytes"] - slope
    assert e["max_batch_line"] == math.floor(
        (budget - e["intercept_bytes"]) / slope) > 0
    # Compiled, never guessed: the bracket fits and its upper end does not
    # (max_batch when they are one request apart).
    compiled = {p["batch"]: p["total_bytes"] for p in e["verify_compiled"]
                + e["points"]}
    lo, hi = e["max_batch_fits"], e["max_batch_over"]
    assert compiled[lo] <= budget < compiled[hi]
    assert e["max_batch"] == (lo if hi == lo + 1 else None)
    assert e["checks"] == []      # Batches 1 and 2 are the fit's own.
    # The fit's points are the compiled memory of the timed calls.
    for p in (p1, p2):
      assert records[(p["batch"], k)]["compiled_memory"] == {
          key: p[key] for key in MEMORY_KEYS}
  assert entries[N]["max_batch_vs_full"] is None
  pruned, full = entries[4]["max_batch"], entries[N]["max_batch"]
  if pruned is not None and full:
    assert entries[4]["max_batch_vs_full"] == pytest.approx(pruned / full)
  else:
    assert entries[4]["max_batch_vs_full"] is None
  table = throughput.format_table(tp_run)
  rows = [line for line in table.splitlines() if line.startswith("|")]
  assert len(rows) == 1 + 1 + 4               # header, rule, four records
  assert "0.01 GB (--memory-budget-gb)" in table


@pytest.mark.parametrize("memory, guess", [
    (lambda b: 100 + 50 * b + 2 * b * b, 198),  # Grows faster than the line.
    (lambda b: 100 + 50 * b + 2 * b * b, 10),
    (lambda b: 100 + 50 * b, 18),               # The line is exact.
    (lambda b: 1000 + 3 * b ** 1.5, 5000),
    (lambda b: 5000 * b, 3),                    # Not even one request fits.
    (lambda b: 100 + 30 * b + (b > 190) * 4000, 330),  # XLA's plan jumps.
])
def test_verify_max_batch_finds_the_largest_batch_that_fits(memory, guess):
  budget = 10000
  want = max([b for b in range(1, 10 ** 5) if memory(b) <= budget], default=0)
  known = [{"batch": b, "total_bytes": memory(b)} for b in (1, 2)]
  calls = []
  found = memory_fit.verify_max_batch(
      lambda b: calls.append(b) or memory(b), guess, budget, known)
  assert found["max_batch"] == want
  assert [c["batch"] for c in found["compiled"]] == calls  # Each compiled once.
  assert len(calls) <= 12 and 1 not in calls and 2 not in calls


def test_verify_max_batch_gives_up_after_its_compiles():
  found = memory_fit.verify_max_batch(lambda b: b, 10 ** 6, 10 ** 9 - 0.5,
                                      max_compiles=3)
  assert found["max_batch"] is None and len(found["compiled"]) == 3
  # The bracket so far: the largest batch seen to fit, none seen over.
  assert found["fits"] == max(c["batch"] for c in found["compiled"])
  assert found["over"] is None


def test_fit_max_batch_by_hand():
  pts = [{"batch": 1, "total_bytes": 300}, {"batch": 2, "total_bytes": 400}]
  fit = memory_fit.fit_max_batch(pts, 1050)
  assert (fit["intercept_bytes"], fit["slope_bytes_per_request"]) == (200, 100)
  assert fit["max_batch"] == 8 and fit["points"] is pts
  assert memory_fit.fit_max_batch(pts, 250)["max_batch"] == 0
  assert memory_fit.fit_max_batch(pts, None)["max_batch"] is None
  flat = [{"batch": 1, "total_bytes": 300}, {"batch": 2, "total_bytes": 300}]
  assert memory_fit.fit_max_batch(flat, 1e9)["max_batch"] is None


def test_fit_checks_compare_the_line_with_timed_batches():
  pts = [{"batch": 1, "total_bytes": 300}, {"batch": 2, "total_bytes": 400}]
  fit = memory_fit.fit_max_batch(pts, 1e4)
  rec = lambda b, total: {"batch": b, "compiled_memory": {"total_bytes": total}}
  checks = memory_fit.fit_checks(fit, [rec(1, 300), rec(4, 720)])
  assert checks == [{"batch": 4, "compiled_total_bytes": 720,
                     "fit_bytes": 600, "compiled_over_fit": 1.2}]


def test_the_budget_comes_from_the_flag_the_device_or_nowhere():
  dev = lambda stats: types.SimpleNamespace(platform="gpu",
                                            memory_stats=lambda: stats)
  assert memory_fit.memory_budget(1.5, dev(None))[:2] == (
      1.5e9, "--memory-budget-gb")
  assert memory_fit.memory_budget(None, dev({"bytes_limit": 7}))[:2] == (
      7.0, "device bytes_limit")
  budget, source, note = memory_fit.memory_budget(None, dev(None))
  assert budget is source is None and "max_batch omitted" in note


@pytest.fixture(scope="module")
def tiny_setup():
  config = get_variant("tiny")
  params = weights.init_params(VLM(config), jnp.float32, 0, "flax")
  return config, throughput.make_setup(config, params, jnp.float32, seed=0,
                                       init="flax")


@pytest.mark.parametrize("k", [4, N])
def test_the_timed_call_generates_decodes_greedy_tokens(tiny_setup, k):
  """What is timed is the real generation: the one-call generate's tokens
  are `decode.decode`'s greedy tokens (no EOS stop) on the deployed pruned
  sequence, and first_token's token and cache are its first step's."""
  config, setup = tiny_setup
  b, new = 2, 6
  images, tokens = batch_inputs(config, b, T_PROMPT, 0)
  fns = throughput.make_functions()
  args = throughput.call_args(setup, k, new, images, tokens)
  got = np.asarray(fns.generate(*args))
  seq, _ = prune.jit_pruned_prefix(
      setup.vlm, setup.params, images, tokens, jnp.ones(tokens.shape, bool),
      jnp.zeros(tokens.shape, jnp.int32), k=k,
      pruner=setup.pruner if k < N else None,
      pruner_params=setup.pruner_params if k < N else None)
  assert seq.length == k + T_PROMPT
  want = np.asarray(decode.decode(setup.vlm, setup.params, seq,
                                  max_new_tokens=new, eos_id=-1, pad_id=0))
  assert got.shape == (b, new) and got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(got)) > 1        # Not a constant stream.
  first, cache = fns.first_token(*args)
  np.testing.assert_array_equal(np.asarray(first), want[:, 0])
  assert cache.size == k + T_PROMPT + new
  nbytes = sum(a.nbytes for a in cache.k + cache.v)
  assert nbytes == b * throughput.kv_cache_bytes(
      config.llm, k + T_PROMPT + new, 4)


@pytest.mark.parametrize("argv, message", [
    (["--throughput", "--new-tokens", "0"], "--new-tokens must be >= 1"),
    (["--throughput", "--memory-budget-gb", "0"],
     "--memory-budget-gb must be > 0"),
    (["--throughput", "--memory-budget-gb", "-2"],
     "--memory-budget-gb must be > 0"),
    (["--throughput", "--memory-budget-gb", "nan"],
     "--memory-budget-gb must be > 0"),
    (["--memory-budget-gb", "1"], "--memory-budget-gb needs --throughput"),
    (["--throughput", "--max-batch-compiles", "-1"],
     "--max-batch-compiles must be >= 0"),
    (["--throughput", "--method", "grid"], "drop --method"),
    (["--throughput", "--n-text", "4", "--new-tokens", "8173"],
     "N + --n-text + --new-tokens = 16 + 4 + 8173 = 8193 positions, over "
     "Gemma's 8192"),
    (["--throughput", "--k", "17"], "outside [1, N = 16]"),
])
def test_bad_input_is_a_parser_error(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    bench.main(["--variant", "tiny", "--k", "4"] + argv
               + ["--out", str(tmp_path / "x.json")])
  assert e.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "x.json").exists()


def test_the_longest_sequence_is_allowed():
  parser = bench.build_parser()
  args = parser.parse_args(["--throughput", "--n-text", "4", "--new-tokens",
                            "8172", "--out", "x.json"])
  throughput.check_args(args, parser, N)   # 16 + 4 + 8172 = 8192: no error.
  with pytest.raises(SystemExit):
    args.new_tokens += 1
    throughput.check_args(args, parser, N)
