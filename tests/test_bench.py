"""The prefill benchmark CLI (autoselect_jax.bench) and its FLOP / byte model."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import bench
from autoselect_jax.benchmarks import timing, weights
from autoselect_jax.inference import cost
from autoselect_jax.method import Scorer
from autoselect_jax.models import GemmaConfig, VLM, get_variant

RECORD_FIELDS = [
    "k", "batch", "encode_ms", "pruner_ms", "prefill_ms",
    "decode_ms_per_token", "prefill_speedup", "flop_ideal_speedup",
    "roofline_ideal_speedup", "roofline_fraction", "pruner_share",
    "pruner_flop_share", "ttft_ms", "ttft_sum_ms", "ttft_speedup",
    "ttft_roofline_ideal_speedup", "ttft_roofline_fraction",
    "ttft_memory_bytes", "prefill_memory_bytes", "process_peak_bytes",
    "ttft_minor_faults", "pruner_minor_faults"]
TIMED = ["encode_ms", "pruner_ms", "prefill_ms", "decode_ms_per_token",
         "ttft_ms"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One tiny end-to-end run: N = 16 visual tokens, K = 4, batch 1 and 2."""
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  mp = pytest.MonkeyPatch()
  mp.setattr(timing, "MATMUL_N", {"cpu": 256, "gpu": 256})  # Fast peaks.
  mp.setattr(timing, "BANDWIDTH_BYTES", {"cpu": 2 ** 22, "gpu": 2 ** 22})
  argv = ["--variant", "tiny", "--k", "4", "--batch", "1,2", "--repeats", "2",
          "--n-text", "4", "--decode-tokens", "2", "--out", str(out)]
  try:
    assert bench.main(argv) == 0
  finally:
    mp.undo()
  with open(out) as f:
    return json.load(f)


def _finite(x):
  return isinstance(x, (int, float)) and math.isfinite(x)


def test_json_has_every_field(tiny_run, capsys):
  res = tiny_run
  assert res["complete"] is True
  assert res["variant"] == "tiny" and res["dtype"] == "float32"
  assert res["device"].endswith(f"({jax.devices()[0].platform})")
  assert (res["n_visual"], res["n_text"]) == (16, 4)
  assert (res["llm_layers"], res["vision_layers"]) == (2, 2)
  assert res["command"].startswith("python -m autoselect_jax.bench --variant")
  assert res["peak_flops"] > 0 and res["peak_bandwidth"] > 0
  assert res["query_chunk"] == 256   # models.attention.QUERY_CHUNK.
  records = res["records"]
  assert sorted((r["k"], r["batch"]) for r in records) == [
      (4, 1), (4, 2), (16, 1), (16, 2)]
  for r in records:
    for name in RECORD_FIELDS:
      assert _finite(r[name]), (name, r)
    for name in TIMED:
      assert r[f"{name}_min"] <= r[name] <= r[f"{name}_max"]
    assert r["prefill_speedup"] > 0 and r["roofline_ideal_speedup"] > 0
    if r["pruned"]:
      assert r["pruner_ms"] > 0 and r["pruner_flop_share"] > 0
      assert r["flop_ideal_speedup"] > 1 and r["roofline_ideal_speedup"] >= 1
    else:
      assert r["k"] == 16 and r["prefill_speedup"] == 1.0
      assert r["pruner_ms"] == 0.0 and r["pruner_flop_share"] == 0.0
      assert r["ttft_speedup"] == 1.0 == r["ttft_roofline_ideal_speedup"]
    # The one call's XLA plan holds at least its weights, and the prefill's
    # own plan (weights + its cache) is part of it.
    assert r["ttft_memory_bytes"] > r["prefill_memory_bytes"] > 0
    assert r["process_peak_bytes"] > 0
  assert [e["batch"] for e in res["reference"]] == [1, 2]
  for e in res["reference"]:
    for name in ("full_ms", "pruned_ms", "speedup", "vs_reference"):
      assert _finite(e[name]) and e[name] > 0
    # Same weights and inputs as the project: same logits.
    assert e["logits_rel_err_vs_project"] < 1e-4
  assert set(res["targets"]) == {"prefill_roofline", "pruner_share",
                                 "decode_not_slower", "vs_reference",
                                 "reference_time", "ttft_roofline"}
  for e in res["reference"]:
    assert e["full_time_vs_reference"] > 0
    assert e["pruned_time_vs_reference"] > 0
  for tgt in res["targets"].values():
    assert isinstance(tgt["pass"], bool) and tgt["entries"]
  table = bench.format_table(res)
  assert "plain-JAX reference" in table and "targets:" in table


# The JSON's keys, in order: readers of docs/bench_*.json rely on them.
TOP_KEYS = [
    "variant", "command", "device", "layer_layout", "platform", "dtype",
    "n_visual", "n_text", "decode_tokens", "repeats", "llm_layers",
    "vision_layers", "peak_flops", "peak_bandwidth", "peak_kernels", "pruner",
    "scorer_width", "query_chunk", "process_peak_source", "host_allocator",
    "records",
    "reference", "targets", "complete"]
RECORD_KEYS = [
    "k", "batch", "pruned", "n_visual", "prefix_length"] + [
        f"{name}{end}" for name in TIMED[:4] for end in ("", "_min", "_max")] + [
    "prefill_flops", "prefill_bytes", "prefill_roofline_ms", "scorer_flops",
    "prefill_speedup", "flop_ideal_speedup", "roofline_ideal_speedup",
    "roofline_fraction", "prefill_roofline_fraction_abs", "pruner_share",
    "pruner_flop_share", "ttft_ms", "ttft_ms_min", "ttft_ms_max",
    "ttft_sum_ms", "ttft_speedup", "ttft_flops", "ttft_bytes",
    "ttft_roofline_ms", "ttft_roofline_ideal_speedup",
    "ttft_roofline_fraction", "ttft_roofline_fraction_abs",
    "ttft_memory_bytes", "prefill_memory_bytes", "process_peak_bytes",
    "ttft_minor_faults", "pruner_minor_faults"]
REFERENCE_KEYS = [
    "batch", "k", "full_length", "pruned_length", "full_ms", "pruned_ms",
    "speedup", "logits_rel_err_vs_project", "vs_reference",
    "full_time_vs_reference", "pruned_time_vs_reference"]


def test_json_keys_and_their_order(tiny_run):
  assert list(tiny_run) == TOP_KEYS
  assert list(tiny_run["peak_kernels"]) == ["flops", "bandwidth"]
  for r in tiny_run["records"]:
    assert list(r) == RECORD_KEYS
  for e in tiny_run["reference"]:
    assert list(e) == REFERENCE_KEYS
  # Records: per batch, the full model first, then each K ascending.
  assert [(r["batch"], r["pruned"]) for r in tiny_run["records"]] == [
      (1, False), (1, True), (2, False), (2, True)]


def test_time_rounds_interleaves_every_call_per_round():
  order, logged = [], []
  calls = [(name, lambda name: order.append(name), (name,))
           for name in ("a", ("b", 1), "c")]
  times = timing.time_rounds(calls, 3, logged.append)
  assert order == ["a", ("b", 1), "c"] * 3
  assert logged == ["round 1/3", "round 2/3", "round 3/3"]
  assert list(times) == ["a", ("b", 1), "c"]
  assert all(len(v) == 3 and min(v) >= 0 for v in times.values())


def test_time_rounds_counts_the_page_faults_of_each_call():
  """A call that touches fresh memory faults its pages in; one that does not,
  (almost) none."""
  fresh = lambda: b"\1" * (64 * 2 ** 20)  # 64 MiB, mapped anew and written.
  faults = {}
  timing.time_rounds([("fresh", fresh, ()), ("none", lambda: None, ())], 2,
                     lambda _: None, faults)
  assert list(faults) == ["fresh", "none"]
  assert min(faults["fresh"]) >= 64 * 2 ** 20 // 4096 // 2
  assert max(faults["none"]) < 100


def test_host_allocator_records_the_malloc_environment(monkeypatch):
  for name in list(os.environ):
    if name.startswith(timing.ALLOCATOR_ENV_PREFIXES):
      monkeypatch.delenv(name)
  assert timing.host_allocator() == {}
  assert "MALLOC_MMAP_MAX_=0" in timing.allocator_hint("cpu")
  assert timing.allocator_hint("gpu") is None
  monkeypatch.setenv("MALLOC_ARENA_MAX", "1")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp")     # Not recorded.
  assert timing.host_allocator() == {
      "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0", "MALLOC_ARENA_MAX": "1"}
  assert timing.allocator_hint("cpu") is None   # The user chose settings.


def test_prefill_cost_matches_a_hand_count():
  c = GemmaConfig(vocab_size=100, width=8, depth=3, num_heads=2,
                  num_kv_heads=1, head_dim=4, mlp_dim=16)
  b, l, p = 2, 5, 4
  # One layer by hand: q (8 -> 2x4), k and v (8 -> 4 each), out (8 -> 8),
  # MLP 8 -> 16 twice and 16 -> 8: 64 + 32 + 32 + 64 + 3 * 128 = 576
  # multiply-adds per token; attention: 2 heads x 5 keys x 4 dims, twice.
  layer_flops = 2 * b * l * 576 + 2 * b * 2 * 2 * l * l * 4
  layer = cost.llm_layer(c, b, l, p)
  assert layer.flops == layer_flops == 13120
  weights = (576 + 2 * 8) * p                         # + two norm scales
  kv = 2 * b * l * 1 * 4 * p
  acts = 2 * b * l * (8 + (2 * 2 + 2 * 1) * 4 + 2 * 16) * p
  assert layer.bytes == weights + kv + acts
  head = cost.llm_head(c, b, p)
  assert head.flops == 2 * b * 8 * 100
  assert head.bytes == (100 * 8 + 8 + b * 8) * p + b * 100 * 4
  pre = cost.prefill(c, b, l, p)
  assert pre.flops == 3 * layer_flops + head.flops
  # Roofline: per component max(FLOPs / peak, bytes / bandwidth).
  peak, bw = 1e3, 1e3
  assert pre.time(peak, bw) == pytest.approx(
      3 * max(layer.flops, layer.bytes) / 1e3
      + max(head.flops, head.bytes) / 1e3)


def test_scorer_cost_matches_a_hand_count():
  b, n, w = 2, 3, 4
  # Per block and token: q, k, v, out (4 w^2) + MLP w -> 4w -> w (8 w^2)
  # = 192 multiply-adds; attention 2 x n x w; head w.
  flops = 2 * (2 * b * n * 192 + 2 * b * n * 2 * n * w) + 2 * b * n * w
  c = cost.scorer(b, n, w, num_layers=2, mlp_ratio=4.0, itemsize=4)
  assert c.flops == flops
  # The default Scorer's parameter count is what the byte model reads.
  vlm = VLM(get_variant("tiny"))
  from autoselect_jax.method import AutoSelect
  tree = AutoSelect(vlm, scorer=Scorer()).abstract_params()["scorer"]
  n_params = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(tree))
  dv = vlm.visual_width
  c = cost.scorer(1, 1, dv, itemsize=1)
  acts = 2 * 2 * (5 * dv + 4 * dv)
  assert c.bytes == n_params + acts + dv


def test_encoder_and_ttft_cost_match_a_hand_count():
  vlm = VLM(get_variant("tiny"))
  c = vlm.config.vision
  b, n, d, f, p = 2, c.num_tokens, c.width, c.mlp_dim, c.patch_size
  enc = cost.encoder(c, b, itemsize=1)
  # Per token: q, k, v, out (4 d^2) + MLP d -> f -> d; attention 2 x n x d.
  assert enc.layer.flops == 2 * b * n * (4 * d * d + 2 * d * f) + \
      2 * 2 * b * n * n * d
  assert enc.depth == c.depth
  assert enc.head.flops == 2 * b * n * p * p * 3 * d   # The patch embedding.
  # One block's weights are the model's own parameter count (itemsize 1).
  block = vlm.abstract_params()["img"]["Transformer"]["encoderblock"]
  n_params = sum(math.prod(a.shape[1:])  # Without the stacked layer axis.
                 for a in jax.tree_util.tree_leaves(block))
  acts = 2 * b * n * (5 * d + f)
  assert enc.layer.bytes == n_params + acts
  # TTFT = encoder + projector on the kept tokens + prefill (+ the Scorer).
  t, k = 4, 5
  sc = cost.scorer(b, n, d)
  full = cost.ttft(vlm.config, b, n, t, 4)
  pruned = cost.ttft(vlm.config, b, k, t, 4, sc)
  parts = lambda kept: (cost.encoder(c, b, 4).flops
                        + 2 * b * kept * d * vlm.config.llm.width
                        + cost.prefill(vlm.config.llm, b, kept + t, 4).flops)
  assert full.flops == parts(n)
  assert pruned.flops == parts(k) + sc.flops
  # Its roofline is summed per component (the Scorer's own included).
  assert pruned.time(1e9, 1e9) == pytest.approx(
      sum(part.time(1e9, 1e9) for part in pruned.parts))
  assert pruned.parts[-1] == sc and len(full.parts) == 3


def test_hash_params_are_finite_and_shaped():
  vlm = VLM(get_variant("tiny"))
  abstract = vlm.abstract_params()
  params = weights.hash_params(abstract, jnp.bfloat16, 0)
  for a, p in zip(jax.tree_util.tree_leaves(abstract),
                  jax.tree_util.tree_leaves(params)):
    assert p.shape == a.shape and p.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(p)))
  emb = np.asarray(params["llm"]["embedder"]["input_embedding"], np.float32)
  assert 0.8 < emb.std() < 1.2 and len(np.unique(emb)) > 100


@pytest.mark.parametrize("argv, message", [
    (["--variant", "tiny", "--k", "0"], "outside [1, N = 16]"),
    (["--variant", "tiny", "--k", "17"], "outside [1, N = 16]"),
    (["--variant", "tiny", "--k", "4,x"], "comma-separated integers"),
    (["--variant", "nope"], "Unknown model variant"),
    (["--variant", "tiny", "--dtype", "float16"], "invalid choice"),
    (["--checkpoint", "/nonexistent/ckpt"], "does not exist"),
    (["--variant", "tiny", "--k", "4", "--batch", "0"], "--batch must be >= 1"),
    (["--variant", "tiny", "--llm-layers", "0"], "--llm-layers must be >= 1"),
    (["--variant", "tiny", "--k", "4", "--query-chunk", "-1"],
     "--query-chunk must be >= 0"),
    (["--variant", "tiny", "--k", "4", "--scorer-width", "40"],
     "--scorer-width 40 must"),
    (["--variant", "tiny", "--method", "autoselect,topk"],
     "argument --method: unknown method 'topk'; choose from autoselect, "
     "random, grid, norm, attention, divprune, visionzip, fastv"),
    (["--variant", "tiny", "--method", "full"], "always measured"),
    (["--variant", "tiny", "--method", "grid,grid"], "duplicate method"),
    (["--variant", "tiny", "--k", "4", "--method", "fastv"],
     "--fastv-layer 2 is outside [1, 2)"),
    (["--variant", "tiny", "--k", "4", "--method", "fastv", "--fastv-layer",
      "1",
      "--scan-layers"], "needs the per-layer layout"),
])
def test_bad_input_is_a_parser_error(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    bench.main(argv + ["--out", str(tmp_path / "x.json")])
  assert e.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "x.json").exists()


def test_checkpoint_params_are_cut_to_the_requested_depths(tmp_path):
  from autoselect_jax.checkpoints import store
  full = get_variant("tiny")
  params = weights.hash_params(VLM(full).abstract_params(), jnp.float32, 0)
  ckpt = str(tmp_path / "ckpt")
  store.save_checkpoint(ckpt, params, full, source="test",
                        write_tokenizer=lambda d: None)
  parser = bench.build_parser()
  args = parser.parse_args(["--checkpoint", ckpt, "--llm-layers", "1",
                            "--vision-layers", "1", "--out", "x.json"])
  config = bench._config(args, parser)
  assert (config.llm.depth, config.vision.depth) == (1, 1)
  cut = weights.load_params(ckpt, config, full, jnp.bfloat16)
  want = VLM(config).abstract_params()
  assert jax.tree_util.tree_structure(cut) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(cut),
                  jax.tree_util.tree_leaves(want)):
    assert a.shape == b.shape and a.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(cut["llm"]["layers"]["mlp"]["linear"], np.float32),
      np.asarray(params["llm"]["layers"]["mlp"]["linear"][:1]).astype(
          jnp.bfloat16).astype(np.float32))
  with pytest.raises(SystemExit):
    bench._config(parser.parse_args(["--checkpoint", ckpt, "--llm-layers",
                                     "3", "--out", "x.json"]), parser)


def test_decode_cache_benchmark_measures_a_long_cache():
  from autoselect_jax.benchmarks import decode_cache
  r = decode_cache.measure(batch=2, slots=64, steps=2, repeats=1)
  assert (r["batch"], r["slots"]) == (2, 64)
  assert r["cache_mb"] == 2 * 4 * 2 * 64 * 4 * 64 * 4 / 2 ** 20
  assert 0 < r["min_ms"] <= r["ms_per_token"] <= r["max_ms"]


# ----------------------------------------------------------------------------
# --method: each pruning method's own stages.

ALL_METHODS = ["autoselect", "random", "grid", "norm", "attention",
               "divprune", "visionzip", "fastv"]


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory):
  """Every method on the tiny model: N = 16, K = 4 and 8, batch 1, FastV
  after decoder layer 1 (the tiny LLM has 2)."""
  out = tmp_path_factory.mktemp("bench") / "methods.json"
  mp = pytest.MonkeyPatch()
  mp.setattr(timing, "MATMUL_N", {"cpu": 256, "gpu": 256})
  mp.setattr(timing, "BANDWIDTH_BYTES", {"cpu": 2 ** 22, "gpu": 2 ** 22})
  argv = ["--variant", "tiny", "--k", "8,4", "--batch", "1", "--repeats", "1",
          "--n-text", "4", "--decode-tokens", "1", "--method",
          ",".join(ALL_METHODS), "--fastv-layer", "1", "--out", str(out)]
  try:
    assert bench.main(argv) == 0
  finally:
    mp.undo()
  with open(out) as f:
    return json.load(f)


def test_methods_json_has_a_record_per_method_and_k(methods_run):
  res = methods_run
  # The core JSON is unchanged; the methods block comes after `reference`.
  at = TOP_KEYS.index("targets")
  assert list(res) == TOP_KEYS[:at] + ["methods"] + TOP_KEYS[at:]
  assert all(list(r) == RECORD_KEYS for r in res["records"])
  block = res["methods"]
  assert block["names"] == ALL_METHODS and block["fastv_layer"] == 1
  recs = block["records"]
  assert [(r["method"], r["k"]) for r in recs] == [("full", 16)] + [
      (m, k) for m in ALL_METHODS for k in (4, 8)]
  full = recs[0]
  full_total = full["encode_ms"] + full["prefill_ms"]
  assert full["pruner_stage"] is None and full["speedup"] == 1.0
  core = {(r["k"], r["pruned"]): r for r in res["records"]}
  for r in recs:
    assert r["batch"] == 1 and r["n_visual"] == 16
    assert r["total_ms"] == pytest.approx(
        r["encode_ms"] + (r["pruner_ms"] or 0.0) + r["prefill_ms"])
    assert r["speedup"] == pytest.approx(full_total / r["total_ms"])
    attention = r["method"] in ("attention", "visionzip")
    assert r["encode_stage"] == ("encode_last_attention" if attention
                                 else "encode")
    if not attention:  # The core's plain encode measurement.
      assert r["encode_ms"] == core[(16, False)]["encode_ms"]
    if r["method"] in ("full", "fastv"):
      assert r["pruner_stage"] is None and r["pruner_share"] is None
      assert r["pruner_ms"] is r["pruner_ms_min"] is r["pruner_ms_max"] is None
    else:
      assert r["pruner_stage"] == "pruner" and r["pruner_ms"] > 0
      assert r["pruner_share"] == pytest.approx(r["pruner_ms"] / r["total_ms"])
      # The K-token prefill is the core's, shared by every pre-LLM method.
      assert r["prefill_stage"] == "prefill"
      assert r["prefill_ms"] == core[(r["k"], True)]["prefill_ms"]
  fastv = [r for r in recs if r["method"] == "fastv"]
  assert {r["prefill_stage"] for r in fastv} == {"fastv_prefill"}
  assert "fastv_prefill" in block["stages"] and "no pruner stage" in (
      block["stages"]["fastv_prefill"])
  table = bench.format_table(res)
  assert "per method (fastv_layer 1)" in table and "visionzip" in table


def test_methods_block_is_absent_by_default(tiny_run):
  assert "methods" not in tiny_run


def test_bench_methods_are_every_pruning_method_but_full():
  from autoselect_jax.inference import pruners
  assert bench.BENCH_METHODS == pruners.PRE_LLM_METHODS + ("fastv",)
  assert set(bench.BENCH_METHODS) | {"full"} == set(pruners.METHODS)


def test_attention_methods_time_the_last_attention_encoder():
  """By structure: the encode stage attention and VisionZip are charged is
  the encoder called with last_attention=True, and its output is what their
  pruner calls receive; plain methods get no attention."""
  import dataclasses
  from autoselect_jax.benchmarks import methods
  from autoselect_jax.inference.pruners import make_pruner
  from autoselect_jax.models.attention import LastAttention
  seen = []

  @dataclasses.dataclass(frozen=True)
  class SpyVLM:
    def encode_image(self, params, images, **kw):
      seen.append(kw)
      f = jnp.ones((images.shape[0], 16, 8)) * jnp.arange(16)[:, None]
      if kw.get("last_attention"):
        return f, LastAttention(jnp.arange(16.0)[None], f)
      return f

  setup = type("Setup", (), {"vlm": SpyVLM(), "params": {}})()
  pruners = {name: make_pruner(name) for name in ("norm", "attention",
                                                  "visionzip")}
  images = jnp.zeros((1, 4, 4, 3))
  calls = methods.timed_calls(methods.make_method_stages(), setup, pruners,
                              images, jnp.ones((1, 16, 8)), None, [4],
                              cache_size=32)
  assert seen == [{"last_attention": True}]   # Traced once, with the option.
  keys = [key for key, _, _ in calls]
  assert keys == [methods.ENCODE_ATTENTION] + [
      ("method_pruner", name, 4) for name in pruners]
  fn, args = calls[0][1:]
  assert args[3].needs_attention
  assert isinstance(fn(*args)[1], LastAttention)
  for (_, name, _), (_, _, args) in zip(keys[1:], calls[1:]):
    assert isinstance(args[4], LastAttention) == (name != "norm")
  # And the records charge that stage's time to them.
  ms = lambda v: [v / 1e3]
  times = {"encode": ms(10), methods.ENCODE_ATTENTION: ms(12),
           ("prefill", 16, False): ms(50), ("prefill", 4, True): ms(20),
           **{key: ms(2) for key in keys[1:]}}
  recs = methods.method_records(list(pruners), pruners, 1, 16, 4, [4], times)
  got = {r["method"]: (r["encode_ms"], r["total_ms"]) for r in recs}
  assert got == pytest.approx({"full": (10, 60), "norm": (10, 32),
                               "attention": (12, 34), "visionzip": (12, 34)})
  assert recs[1]["speedup"] == pytest.approx(60 / 32)
  assert recs[1]["pruner_share"] == pytest.approx(2 / 32)


def test_a_narrow_scorer_is_timed_and_costed_at_its_width(tiny_run, tmp_path):
  out = tmp_path / "narrow.json"
  mp = pytest.MonkeyPatch()
  mp.setattr(timing, "MATMUL_N", {"cpu": 256, "gpu": 256})
  mp.setattr(timing, "BANDWIDTH_BYTES", {"cpu": 2 ** 22, "gpu": 2 ** 22})
  try:
    assert bench.main(["--variant", "tiny", "--k", "4", "--batch", "1",
                       "--repeats", "1", "--n-text", "4", "--decode-tokens",
                       "1", "--scorer-width", "16", "--out", str(out)]) == 0
  finally:
    mp.undo()
  res = json.loads(out.read_text())
  dv = VLM(get_variant("tiny")).visual_width
  assert (res["scorer_width"], tiny_run["scorer_width"]) == (16, dv)
  (narrow,) = [r for r in res["records"] if r["pruned"]]
  wide = [r for r in tiny_run["records"] if r["pruned"] and r["batch"] == 1]
  assert narrow["scorer_flops"] == cost.scorer(1, 16, dv, 16).flops
  assert narrow["scorer_flops"] < wide[0]["scorer_flops"]
  assert narrow["pruner_ms"] > 0
