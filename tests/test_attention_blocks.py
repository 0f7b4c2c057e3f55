"""benchmarks.attention_blocks: dense and blocked attention timed side by
side give the same encoder features and kept tokens."""

import json

import pytest

from autoselect_jax.benchmarks import attention_blocks
from autoselect_jax.models import attention


def test_tiny_run_records_every_chunk_with_equal_outputs(tmp_path, capsys):
  out = tmp_path / "ab.json"
  assert attention_blocks.main([
      "--variant", "tiny", "--vision-layers", "2", "--chunks", "0,4,5",
      "--k", "4", "--batch", "2", "--repeats", "2", "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  assert res["command"].startswith(
      "python -m autoselect_jax.benchmarks.attention_blocks --variant tiny")
  assert (res["n_visual"], res["k"], res["batch"]) == (16, 4, 2)
  assert [r["query_chunk"] for r in res["records"]] == [0, 4, 5]
  for r in res["records"]:
    for name in ("encode", "pruner"):
      assert r[f"{name}_ms_min"] <= r[f"{name}_ms"] <= r[f"{name}_ms_max"]
      assert r[f"{name}_temp_bytes"] > 0
      assert r[f"{name}_max_abs_diff"] < 1e-5
  assert attention.QUERY_CHUNK == 256          # Restored after the run.
  assert "| dense |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--chunks", "0,-4"], "distinct integers >= 0"),
    (["--chunks", "4,4"], "distinct integers >= 0"),
    (["--variant", "tiny", "--k", "17"], "outside [0, N = 16]"),
    (["--variant", "tiny", "--scorer-width", "40"], "--scorer-width 40"),
    (["--variant", "nope"], "Unknown model variant"),
])
def test_bad_arguments(argv, message, capsys, tmp_path):
  with pytest.raises(SystemExit):
    attention_blocks.main(argv + ["--out", str(tmp_path / "x.json")])
  assert message in capsys.readouterr().err
