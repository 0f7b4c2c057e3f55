"""benchmarks.shares: the Scorer's FLOP share at full depth."""

import pytest

from autoselect_jax.benchmarks import shares
from autoselect_jax.inference import cost
from autoselect_jax.models import get_variant


def test_share_is_the_cost_models_ratio_and_falls_with_width():
  config = get_variant("paligemma-3b-896")
  wide, narrow = shares.shares(config, 0), shares.shares(config, 256)
  assert (wide["n"], wide["width"], narrow["width"]) == (4096, 1152, 256)
  full = cost.prefill(config.llm, 1, 4096 + 32, 4).flops
  assert wide["prefill_share"] == cost.scorer(1, 4096, 1152).flops / full
  assert narrow["prefill_share"] < 0.005 < wide["prefill_share"]
  assert narrow["ttft_share"] < narrow["prefill_share"]


def test_cli_prints_a_row_per_variant_and_width(capsys):
  assert shares.main(["--variants", "paligemma-3b-224,paligemma-3b-448",
                      "--widths", "0,256"]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines()
          if l.startswith("| paligemma")]
  assert len(rows) == 4 and "| 1024 | 256 |" in rows[3]


@pytest.mark.parametrize("argv, message", [
    (["--widths", "40"], "must be 0 or a positive multiple"),
    (["--variants", "nope"], "Unknown model variant"),
])
def test_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit):
    shares.main(argv)
  assert message in capsys.readouterr().err
