"""Config checks (`training.config`), the CLI's one-line errors, and the
layering rule: the training system and the data package know no client."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

from autoselect_jax.training.config import ConfigError, validate, validate_budget

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def dataset(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text('{"image": "0.png", "caption": "a b"}\n')
  return str(path)


def _env():
  # Inherits os.environ (e.g. a persistent compilation cache dir).
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def test_config_errors(dataset, tmp_path):
  from configs import paligemma
  c = paligemma.get_config()
  with pytest.raises(ConfigError, match=r"--config.model.checkpoint") as e:
    validate(c, num_devices=1)
  assert e.value.field == "model.checkpoint"
  c.model.checkpoint = str(tmp_path)  # Only checked to exist here.
  with pytest.raises(ConfigError, match=r"--config.data.train_path"):
    validate(c, num_devices=1)
  c.data.train_path = dataset
  validate(c, num_devices=1)
  c.batch_size = 12
  with pytest.raises(ConfigError, match="batch_size=12 is not divisible by the 8 devices"):
    validate(c, num_devices=8)
  c.batch_size = 8
  bad = {"tau.end": 0.0, "tau.start": -1.0, "tau.steps": 0,
         "optim.lr": 0.0, "optim.warmup_steps": -1, "optim.b2": 1.0,
         "optim.weight_decay": -0.1, "num_steps": -2,
         "early_stopping_patience": -1, "autoselect.scorer_heads": 0,
         "sharding.min_fsdp_size": -1, "data.source": "synthetic"}
  for field, value in bad.items():
    group, _, name = field.rpartition(".")
    node = c[group] if group else c
    old, node[name] = node[name], value
    with pytest.raises(ConfigError, match=f"^{field}={value!r}") as e:
      validate(c, num_devices=1)
    assert e.value.field == field
    node[name] = old
  c.num_steps, c.optim.warmup_steps = 50, 50
  with pytest.raises(ConfigError, match="warmup_steps=50 must be smaller than "
                     "the run's 50 steps"):
    validate(c, num_devices=1)
  c.num_steps, c.autoselect.k = 0, 300
  with pytest.raises(ConfigError, match="K=300 exceeds the model's 256 visual"):
    validate_budget(c, 256)
  c.autoselect.k, c.autoselect.k_choices = 8, "4,x"
  with pytest.raises(ConfigError, match="k_choices='4,x'"):
    validate(c, num_devices=1)


def _cli(args, workdir):
  return subprocess.run(
      [sys.executable, "-m", "autoselect_jax.train", "--workdir", workdir]
      + args, env=_env(), cwd=REPO, capture_output=True, text=True)


def test_cli_rejects_unknown_keys_and_bad_values(tmp_path):
  w = str(tmp_path / "w")
  pg = ["--config", os.path.join(REPO, "configs/paligemma.py")]
  for key, close in (("autoselect.kk", "autoselect.k"),
                     ("optim.warmup_step", "optim.warmup_steps"),
                     ("nosuch.lr", "optim.lr")):
    r = _cli(pg + [f"--config.{key}=3"], w)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and f"unknown config key --config.{key}" in line
    assert close in line.split("closest valid keys:")[1]
  r = _cli(pg, w)
  assert r.returncode == 2
  assert "--config.model.checkpoint" in r.stderr and "configs/demo.py" in r.stderr
  r = _cli(pg + [f"--config.model.checkpoint={tmp_path}",
                 "--config.data.train_path=/nonexistent.jsonl"], w)
  assert r.returncode == 2 and "/nonexistent.jsonl' does not exist" in r.stderr
  # Schedules are checked before the demo client pre-trains anything.
  demo = ["--config", os.path.join(REPO, "configs/demo.py")]
  for flag, field in (("--config.tau.steps=0", "tau.steps=0"),
                      ("--config.optim.warmup_steps=150",
                       "optim.warmup_steps=150"),
                      ("--config.demo.budgets=4,x", "demo.budgets")):
    r = _cli(demo + [flag], w)
    assert r.returncode == 2 and field in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
  assert not os.path.exists(w), os.listdir(w)


def _imported_modules(path: pathlib.Path, package: str) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: resolve against the package.
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      names |= {base} | {f"{base}.{a.name}" for a in node.names}
  return names


def test_training_and_data_know_no_demo():
  """The demo is a client: training/ and data/ neither import nor name it."""
  root = pathlib.Path(REPO) / "autoselect_jax"
  modules = []
  for package in ("training", "data"):
    for path in sorted((root / package).glob("*.py")):
      modules.append(f"autoselect_jax.{package}.{path.stem}".replace(
          ".__init__", ""))
      imported = _imported_modules(path, f"autoselect_jax.{package}")
      assert not [m for m in imported if m.startswith("autoselect_jax.demo")], (
          path, imported)
      text = path.read_text().lower()
      for word in ("autoselect_jax.demo", "demo"):
        assert word not in text, (path, word)
  code = ("import importlib, sys\n"
          f"for m in {modules!r}: importlib.import_module(m)\n"
          "print(sorted(m for m in sys.modules if 'demo' in m))")
  r = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
