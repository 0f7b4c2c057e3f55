from autoselect_jax import smoke


def test_smoke_run_prints_greedy_ids(capsys):
  assert smoke.main(["--max-new-tokens", "3"]) == 0
  out = capsys.readouterr().out
  assert "tiny: 52,704 parameters, 16 visual tokens; greedy ids [[" in out
