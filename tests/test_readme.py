"""Every command in README.md's ```bash blocks is run or flag-checked here, so
the README cannot drift from the code.

- Flags: each `python -m autoselect_jax.X ...` command names a module that
  exists, and the module's own parser accepts the command's arguments, with
  no work done. argparse CLIs are called through `main(argv)` with
  `ArgumentParser.parse_args` raising as soon as it has parsed; `train`
  (absl flags and ml_collections config overrides) is parsed in a subprocess
  by its own `_parse_flags`, which loads the config file and applies every
  `--config.FIELD=VALUE` (an unknown field or a bad value fails). The
  trainer arguments the launchers pass on (after `--`, `CONFIG_OVERRIDES`)
  are checked the same way.
- Runs: the fast commands run end to end, in process, on tiny inputs made
  here: an HF PaliGemma folder with random weights (`hf_reference`, as the
  parity tests build it) whose 64 px images and 4 px patches give N = 256
  visual tokens like PaliGemma-224, so the README's K values work as
  written. The README's relative paths (ckpt/, runs/, cat.jpg) resolve in a
  temporary folder, and `/data/...` is replaced by a folder there. The
  Python blocks (the Parquet example, `Pipeline`) run the same way, and the
  JSONL example is read through the trainer's data source.
- Coverage: every command must be in RUN (run by the named test), FLAGS_ONLY
  (with the reason it is not run) or SHELL (not Python; with what is done
  instead). A README command in none of them fails
  `test_every_readme_command_is_covered`, as does an entry whose command is
  no longer in the README. Commands are matched by their signature: the
  module (with `evaluate`'s sub-command) and the flags in order, without
  values, so a new or removed flag needs a look here, a new path does not.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import glob
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from unittest import mock

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# ----------------------------------------------------------------- coverage

# Signature -> the test in this file that runs the command end to end.
RUN = {
    "autoselect_jax.convert --hf --out": "tiny_world (fixture)",
    "autoselect_jax.convert --big-vision --tokenizer --out":
        "test_convert_big_vision",
    "autoselect_jax.generate --checkpoint --image --prompt --max-new-tokens "
    "--json": "test_generate_full_model",
    "autoselect_jax.generate --checkpoint --scorer --k --image --image "
    "--prompt --max-new-tokens --json": "test_pruned_generation_cli_and_python",
    "autoselect_jax.evaluate run --checkpoint --scorer --method --k "
    "--benchmark --data --out": "test_evaluation_commands",
    "autoselect_jax.evaluate run --checkpoint --method --benchmark --data "
    "--out": "test_evaluation_commands",
    "autoselect_jax.evaluate score --benchmark --data --predictions":
        "test_evaluation_commands",
    "autoselect_jax.evaluate report --out": "test_evaluation_commands",
    "autoselect_jax.visualize --checkpoint --scorer --image --method --k "
    "--out": "test_evaluation_commands",
    # Slow: a training run compiles the train and validation steps.
    "autoselect_jax.train --config --workdir --config.model.checkpoint "
    "--config.data.train_path --config.data.val_path":
        "test_training_commands (slow)",
    "autoselect_jax.train --config --workdir --config.model.checkpoint "
    "--config.data.source --config.data.train_path":
        "test_training_commands (slow)",
    # Slow: about 30 compiles (every stage at 4 budgets and 2 batches).
    "autoselect_jax.bench --checkpoint --k --batch --out":
        "test_bench_on_a_converted_checkpoint (slow)",
}

# Signature -> why it is only flag-checked (test_python_command_flags).
FLAGS_ONLY = {
    "autoselect_jax.train --config --workdir":
        "the embedded demo takes about 8.5 min on a 2-core CPU; "
        "tests/test_train.py::test_demo_pipeline_end_to_end_shortened runs "
        "configs/demo.py end to end with fewer steps (slow)",
    "autoselect_jax.launch.local --num-processes -- --config --workdir":
        "trains the demo in two processes (minutes); tests/test_train.py "
        "runs this launcher's two-process training for real on a tiny "
        "model, and test_launcher_commands runs the README's DRY_RUN=1 form",
    "autoselect_jax.visualize --checkpoint --scorer --image --image --image "
    "--method --k --out":
        "needs the trained demo's /tmp/demo (8.5 min) and would overwrite "
        "docs/selection_synthetic_k8.png; visualize runs for real in "
        "test_evaluation_commands",
    "autoselect_jax.bench --variant --llm-layers --vision-layers --k --batch "
    "--dtype --repeats --out":
        "about 6 min on this CPU and writes docs/bench_cpu.json; bench runs "
        "for real in test_bench_on_a_converted_checkpoint and "
        "tests/test_bench.py",
    "autoselect_jax.bench --variant --k --batch --dtype --repeats "
    "--decode-tokens --out":
        "the full 3B model in bfloat16 needs a GPU (80 s on an H200) and "
        "writes docs/bench_h200_bf16.json",
    "autoselect_jax.bench --variant --llm-layers --vision-layers --k --batch "
    "--dtype --repeats --decode-tokens --out":
        "8 min (896 px) and 12 min (448 px) on this CPU, writing "
        "docs/bench_896_cpu.json and docs/bench_448_cpu.json; the same stages "
        "and TTFT call run for real in tests/test_bench.py",
    "autoselect_jax.bench --variant --llm-layers --vision-layers --k --batch "
    "--dtype --repeats --decode-tokens --scorer-width --out":
        "8 min on this CPU and writes docs/bench_896_w256_cpu.json; "
        "tests/test_bench.py runs --scorer-width on the tiny model",
    "autoselect_jax.bench --throughput --variant --llm-layers --vision-layers "
    "--k --batch --new-tokens --dtype --repeats --memory-budget-gb --out":
        "13 min on this CPU; tests/test_throughput.py runs --throughput end "
        "to end on the tiny model",
    "autoselect_jax.benchmarks.attention_blocks --variant --vision-layers "
    "--chunks --batch --repeats --out":
        "5 min on this CPU and writes docs/attention_blocks_896_cpu.json; "
        "tests/test_attention_blocks.py runs it on the tiny model",
    "autoselect_jax.benchmarks.shares --widths":
        "the cost model alone; tests/test_shares.py runs its CLI",
    "autoselect_jax.experiments.synthetic --seeds --out":
        "about 90 min alone; tests/test_experiments.py runs its --quick "
        "setting end to end (slow)",
}

# Signature -> what is done instead (commands that are not `python -m
# autoselect_jax...`).
SHELL = {
    "pip install -r requirements.txt":
        "installs; .ci/run installs the same files in CI (the files exist: "
        "test_shell_commands)",
    "pip install -r requirements.txt -r requirements-test.txt":
        "installs; .ci/run installs the same files in CI",
    "python -m pytest -q": "the test suite itself: .ci/run runs it in CI",
    "DRY_RUN= launch/local.sh --num-processes 2 -- --config configs/demo.py "
    "--workdir /tmp/demo_2proc":
        "run as written by test_launcher_commands (DRY_RUN=1: prints the "
        "processes' commands)",
    "PROJECT= ACCELERATOR_TYPE= launch/tpu_pod.sh create":
        "needs gcloud and a GCP project; test_launcher_commands runs it with "
        "DRY_RUN=1 (tests/test_launch.py covers the DRY_RUN path in detail)",
    "PROJECT= launch/tpu_pod.sh setup": "as tpu_pod.sh create",
    "PROJECT= WORKDIR= CONFIG_OVERRIDES= launch/tpu_pod.sh train":
        "as tpu_pod.sh create; CONFIG_OVERRIDES is also flag-checked",
    "PROJECT= WORKER= launch/tpu_pod.sh logs": "as tpu_pod.sh create",
    "PROJECT= launch/tpu_pod.sh delete": "as tpu_pod.sh create",
    "launch/gpu_bench.sh /tmp/gpu_bench":
        "needs a GPU (not lent to this machine); tests/test_launch.py runs it "
        "with DRY_RUN=1 and parses every command it would run",
    "WORKDIR= CONFIG_OVERRIDES= sbatch launch/slurm.sbatch":
        "needs a SLURM cluster; test_launcher_commands runs the batch script "
        "with bash, DRY_RUN=1 and a faked SLURM environment, and "
        "CONFIG_OVERRIDES is flag-checked",
}

# Distinctive text of each ```python block in the README -> the test that
# runs it.
PYTHON_BLOCKS = {
    "pq.write_table(table,": "test_data_examples_read_through_the_trainer",
    "Pipeline.from_checkpoint(": "test_pruned_generation_cli_and_python",
}

# Training on the tiny model: the README's command plus these overrides
# (a few steps, a small batch; the README's K = 64 of N = 256 stays).
TINY_TRAIN = ["--config.num_steps=2", "--config.batch_size=4",
              "--config.optim.warmup_steps=0", "--config.model.dtype=float32",
              "--config.data.max_text_len=16",
              "--config.autoselect.scorer_heads=4",
              "--config.autoselect.denoiser_heads=4",
              "--config.checkpoint.async_save=False",
              "--config.distributed.initialize=no"]

# ------------------------------------------------------ reading the README

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclasses.dataclass(frozen=True)
class Command:
  line: int                          # README line where it starts.
  text: str                          # Shell text, comments and env dropped.
  env: tuple[tuple[str, str], ...]   # Leading VAR=VALUE assignments.
  words: tuple[str, ...]             # shlex words of `text`.

  @property
  def module(self) -> str | None:
    w = self.words
    if len(w) > 2 and w[0] in ("python", "python3") and w[1] == "-m":
      return w[2]
    return None

  @property
  def args(self) -> list[str]:
    return list(self.words[3:])

  @property
  def signature(self) -> str:
    env = [f"{k}=" for k, _ in self.env]
    module = self.module
    if not (module or "").startswith("autoselect_jax."):
      return " ".join(env + list(self.words))
    args = self.args
    sub = []
    if module == "autoselect_jax.evaluate" and args and args[0][:1] != "-":
      sub = [args[0]]
    flags = [a.split("=", 1)[0] for a in args if a.startswith("-")]
    return " ".join(env + [module] + sub + flags)

  def __str__(self) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
    return f"README.md:{self.line}: {env + ' ' if env else ''}{self.text}"


def _outside_quotes(text: str):
  """(index, char) of each character of `text` outside quotes."""
  quote = None
  i = 0
  while i < len(text):
    c = text[i]
    if quote:
      if c == "\\" and quote == '"':
        i += 1
      elif c == quote:
        quote = None
    elif c == "\\":
      i += 1
    elif c in "'\"":
      quote = c
    else:
      yield i, c
    i += 1


def strip_comment(text: str) -> str:
  """`text` without a shell comment (a `#` that starts a word)."""
  for i, c in _outside_quotes(text):
    if c == "#" and (i == 0 or text[i - 1].isspace()):
      return text[:i].rstrip()
  return text.rstrip()


def split_and(text: str) -> list[str]:
  """`a && b` -> [a, b] (outside quotes)."""
  parts, start = [], 0
  for i, c in _outside_quotes(text):
    if c == "&" and text[i:i + 2] == "&&" and i >= start:
      parts.append(text[start:i].strip())
      start = i + 2
  parts.append(text[start:].strip())
  return [p for p in parts if p]


def logical_lines(body: str, first_line: int):
  """(line number, text) of each command line of a bash block: `\\`
  continuations joined, comments and blank lines dropped."""
  pending, start = "", None
  for n, raw in enumerate(body.split("\n"), first_line):
    line = strip_comment(raw)
    if start is None:
      start = n
    if line.endswith("\\"):
      pending += line[:-1].rstrip() + " "
      continue
    text = (pending + line).strip()
    if text:
      yield start, text
    pending, start = "", None
  assert not pending, f"README.md:{start}: a `\\` continues past the block"


def blocks(text: str, lang: str) -> list[tuple[int, str]]:
  """(first body line, body) of each ```lang block."""
  out = []
  for m in _FENCE.finditer(text):
    if m.group(1) == lang:
      out.append((text.count("\n", 0, m.start(2)) + 1, m.group(2)))
  return out


def _drop_word(text: str) -> str:
  """`text` without its first shell word."""
  for i, c in _outside_quotes(text):
    if c.isspace():
      return text[i:].lstrip()
  return ""


def _readme_text() -> str:
  with open(README, encoding="utf-8") as f:
    return f.read()


def readme_commands(text: str | None = None) -> list[Command]:
  """Every command of the bash blocks of README `text` (default: the file)."""
  text = _readme_text() if text is None else text
  commands = []
  for first, body in blocks(text, "bash"):
    for line, logical in logical_lines(body, first):
      for part in split_and(logical):
        words = shlex.split(part)
        env = []
        while words and _ENV.match(words[0]):
          k, v = words.pop(0).split("=", 1)
          env.append((k, v))
        assert words, f"README.md:{line}: only assignments: {part}"
        shell = part
        for _ in env:  # Drop the assignments from the shell text too.
          shell = _drop_word(shell)
        commands.append(Command(line, shell, tuple(env), tuple(words)))
  return commands


def commands_for(signature: str) -> list[Command]:
  found = [c for c in readme_commands() if c.signature == signature]
  assert found, f"no README command has the signature {signature!r}"
  return found


# ------------------------------------------------------------- the parsers


class _Parsed(Exception):
  def __init__(self, namespace):
    super().__init__("parsed")
    self.namespace = namespace


def parse_only(module_name: str, argv: list[str]) -> argparse.Namespace:
  """`module.main(argv)` up to its argparse parse, and no further."""
  module = importlib.import_module(module_name)
  assert callable(getattr(module, "main", None)), f"{module_name}: no main()"
  real = argparse.ArgumentParser.parse_args

  def stop(self, args=None, namespace=None):
    raise _Parsed(real(self, args, namespace))

  err = io.StringIO()
  with mock.patch.object(argparse.ArgumentParser, "parse_args", stop), \
      contextlib.redirect_stderr(err):
    try:
      module.main(argv)
    except _Parsed as p:
      return p.namespace
    except SystemExit as e:
      raise AssertionError(f"{module_name} rejects {argv}: exit {e.code}\n"
                           f"{err.getvalue()}") from None
  raise AssertionError(f"{module_name}.main returned before parsing")


_TRAIN_PARSE = textwrap.dedent("""\
    import sys
    from autoselect_jax import train
    rest = train._parse_flags(["train", *sys.argv[1:]])
    assert rest == ["train"], f"unexpected arguments {rest[1:]}"
    assert train._CONFIG.value is not None, "--config is missing"
    assert train._WORKDIR.value, "--workdir is missing"
    print("parsed", train._CONFIG.value.client or "no client")
    """)


def parse_train(argv: list[str]) -> None:
  """The trainer's own flag parsing (absl + the config file + overrides),
  in a subprocess: absl's flags are global to a process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  r = subprocess.run([sys.executable, "-c", _TRAIN_PARSE, *argv], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and "parsed" in r.stdout, (
      f"train rejects {argv}:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")


def launcher_train_args(command: Command) -> list[str] | None:
  """The trainer arguments a launcher command passes on, or None."""
  env = dict(command.env)
  if "CONFIG_OVERRIDES" not in env:
    return None
  script = command.words[-1] if command.words[0] == "sbatch" else (
      command.words[0])
  workdir = env.get("WORKDIR", "/tmp/run")
  config = "configs/paligemma.py"
  assert os.path.basename(script) in ("tpu_pod.sh", "slurm.sbatch"), script
  return ["--config", env.get("CONFIG", config), "--workdir", workdir,
          *shlex.split(env["CONFIG_OVERRIDES"])]


# ------------------------------------------------------ running commands


_DATA = re.compile(r"(?<=[\s='\"])/data/")


def substitute(text: str, root: str) -> str:
  """The README's /data/... placeholders -> root/data/..."""
  return _DATA.sub(root.rstrip("/") + "/data/", " " + text)[1:]


def expand(command: Command, cwd: str, root: str) -> list[str]:
  """The command's words as bash gives them in `cwd` (quotes, globs)."""
  text = substitute(command.text, root)
  r = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + text], cwd=cwd,
                     capture_output=True, text=True, check=True)
  return r.stdout.split("\0")[:-1]


def run_main(command: Command, cwd: str, root: str, extra=()) -> None:
  """Runs a `python -m autoselect_jax.X` README command in this process,
  from `cwd`; it must return 0."""
  words = expand(command, cwd, root)
  assert words[:2] == ["python", "-m"], command
  module = importlib.import_module(words[2])
  with contextlib.chdir(cwd):
    rc = module.main([*words[3:], *extra])
  assert rc in (0, None), f"{command} returned {rc}"


def _exec_block(source: str, cwd: str, root: str):
  """Runs a README Python block from `cwd`; returns its last expression."""
  tree = ast.parse(substitute(source, root))
  last = None
  if tree.body and isinstance(tree.body[-1], ast.Expr):
    last = ast.Expression(tree.body.pop().value)
  scope = {"__name__": "readme_block"}
  name = "<README python block>"
  with contextlib.chdir(cwd):
    exec(compile(tree, name, "exec"), scope)  # noqa: S102
    if last is not None:
      return eval(compile(last, name, "eval"), scope)  # noqa: S307
  return None


def python_block(marker: str) -> str:
  found = [b for _, b in blocks(_readme_text(), "python") if marker in b]
  assert len(found) == 1, f"{len(found)} README python blocks hold {marker!r}"
  return found[0]


# -------------------------------------------------- the tiny world on disk


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
  """A folder laid out as the README's commands expect: data/ holds the HF
  folder (random tiny PaliGemma, N = 256), the big_vision .npz and its
  tokenizer, a GQA copy; cat.jpg, dog.jpg; configs/ links to the repo's.
  Runs the README's `convert --hf` (-> ckpt/pg224) and puts a random Scorer
  at runs/pg224/scorer (the slow test trains a real one)."""
  import hf_reference
  import test_benchmarks_gqa_pope_mme as gqa_fixture
  import test_convert
  root = str(tmp_path_factory.mktemp("readme"))
  data = os.path.join(root, "data")
  os.makedirs(data)
  (command,) = commands_for("autoselect_jax.convert --hf --out")
  hf_folder = expand(command, root, root)[4]
  assert hf_folder.startswith(data), hf_folder
  hf_reference.build_hf_paligemma(hf_folder, image_size=64, patch_size=4)
  for name, image in zip(["cat.jpg", "dog.jpg"],
                         hf_reference.random_images(2, 64, seed=3)):
    image.save(os.path.join(root, name))
  os.symlink(os.path.join(ROOT, "configs"), os.path.join(root, "configs"))
  gqa_fixture.write_gqa(os.path.join(data, "gqa"))
  run_main(command, root, root)

  # The big_vision inputs, from the same weights (as tests/test_convert.py).
  (bv,) = commands_for("autoselect_jax.convert --big-vision --tokenizer "
                       "--out")
  words = expand(bv, root, root)
  npz = words[words.index("--big-vision") + 1]
  tokenizer = words[words.index("--tokenizer") + 1]
  test_convert._write_npz(npz, *test_convert.to_big_vision(
      test_convert._state(hf_folder), test_convert._hf_config(hf_folder)))
  shutil.copy(os.path.join(hf_folder, "_spm", "tokenizer.model"), tokenizer)

  _export_random_scorer(os.path.join(root, "ckpt", "pg224"),
                        os.path.join(root, "runs", "pg224", "scorer"))
  return root


def _export_random_scorer(ckpt: str, out: str) -> None:
  import jax
  import jax.numpy as jnp
  from autoselect_jax.checkpoints import store
  from autoselect_jax.checkpoints.scorer import export_scorer
  from autoselect_jax.method.modules import Scorer
  from autoselect_jax.models import VLM
  vlm = VLM(store.load_config(ckpt))
  dummy = jnp.zeros((1, vlm.num_visual_tokens, vlm.visual_width))
  scorer = Scorer(num_layers=1, num_heads=2, mlp_ratio=2.0)
  params = scorer.init(jax.random.key(7), dummy)["params"]
  export_scorer(out, params, {
      "format": "autoselect_jax.scorer", "version": 1,
      "scorer": {"num_layers": 1, "width": None, "num_heads": 2,
                 "mlp_ratio": 2.0, "eps": 1e-6},
      "position_policy": "original", "vlm": vlm.config.to_dict()})


def _json_lines(text: str) -> list[dict]:
  return [json.loads(l) for l in text.splitlines() if l.startswith("{")]


# ------------------------------------------------------------------- tests


def test_readme_parsing_handles_continuations_comments_and_env():
  text = textwrap.dedent("""\
      intro
      ```bash
      # a comment line
      python -m autoselect_jax.x --a 1 \\
          --b "two words" --c='#not a comment'   # a comment
      pip install -r r.txt && python -m pytest -q

      A=1 B="x y" launch/s.sh train
      ```
      ```python
      ignored = 1
      ```
      """)
  cmds = readme_commands(text)
  assert [c.line for c in cmds] == [4, 6, 6, 8]
  assert cmds[0].words == ("python", "-m", "autoselect_jax.x", "--a", "1",
                           "--b", "two words", "--c=#not a comment")
  assert cmds[0].signature == "autoselect_jax.x --a --b --c"
  assert [c.signature for c in cmds[1:]] == [
      "pip install -r r.txt", "python -m pytest -q", "A= B= launch/s.sh train"]
  assert cmds[3].env == (("A", "1"), ("B", "x y"))
  assert cmds[3].text == "launch/s.sh train"
  assert substitute("--data /data/gqa --x=/data/a '/data/b' q/data/c",
                    "/w") == ("--data /w/data/gqa --x=/w/data/a '/w/data/b' "
                              "q/data/c")


def coverage_problems(text: str) -> list[str]:
  """What keeps README `text` from being covered: commands in none of RUN,
  FLAGS_ONLY, SHELL; entries whose command is gone; python blocks no test
  runs."""
  cmds = readme_commands(text)
  known = {**RUN, **FLAGS_ONLY, **SHELL}
  problems = [f"not run or flag-checked: {c}\n    signature: {c.signature!r}"
              for c in cmds if c.signature not in known]
  signatures = {c.signature for c in cmds}
  problems += [f"no longer in the README: {s!r}"
               for s in sorted(set(known) - signatures)]
  problems += [f"not `python -m autoselect_jax...`, so belongs in SHELL: {s!r}"
               for s in sorted(signatures & set(known))
               if (s in SHELL) == s.startswith("autoselect_jax.")]
  problems += [f"README.md:{line}: a python block no test runs"
               for line, body in blocks(text, "python")
               if not any(m in body for m in PYTHON_BLOCKS)]
  return problems


def test_every_readme_command_is_covered():
  assert len(readme_commands()) >= 20, "the README's bash blocks went missing"
  assert not set(RUN) & set(FLAGS_ONLY) and not set(RUN) & set(SHELL)
  assert not set(FLAGS_ONLY) & set(SHELL)
  for name in RUN.values():
    test = name.split(" ")[0]
    assert test in globals(), f"RUN names {test}, which is not in this file"
  problems = coverage_problems(_readme_text())
  assert not problems, (
      "add each README command to RUN (with a test that runs it), "
      "FLAGS_ONLY (with the reason) or SHELL in tests/test_readme.py, and "
      "drop entries that left the README:\n" + "\n".join(problems))


def test_a_new_or_changed_readme_command_fails_the_coverage():
  text = _readme_text()
  assert coverage_problems(text) == []
  new = text + ("\n```bash\n"
                "python -m autoselect_jax.generate --checkpoint c \\\n"
                "    --image x.png --prompt p --temperature 0.5\n"
                "curl example.org\n```\n")
  problems = coverage_problems(new)
  assert len(problems) == 2 and "--temperature" in problems[0], problems
  assert "curl" in problems[1]
  gone = text.replace("--seeds 0,1,2 --out /tmp/exp", "--seeds 0,1,2")
  assert any("no longer in the README" in p and "synthetic" in p
             for p in coverage_problems(gone))
  extra = text + "\n```python\nprint(1)\n```\n"
  assert "a python block no test runs" in coverage_problems(extra)[-1]


def test_flag_checks_catch_bad_flags():
  with pytest.raises(AssertionError, match="rejects"):
    parse_only("autoselect_jax.generate", ["--checkpoint", "c", "--image",
                                           "x", "--prompt", "p", "--nosuch"])
  with pytest.raises(AssertionError, match="rejects"):
    parse_only("autoselect_jax.evaluate", ["run", "--checkpoint", "c",
                                           "--benchmark", "nosuch", "--out",
                                           "o"])
  with pytest.raises(AssertionError, match="unknown config key"):
    parse_train(["--config", "configs/paligemma.py", "--workdir", "w",
                 "--config.data.nosuch=1"])


def _python_commands():
  return [pytest.param(c, id=f"L{c.line}-{c.signature.split()[0]}")
          for c in readme_commands()
          if (c.module or "").startswith("autoselect_jax.")]


@pytest.mark.parametrize("command", _python_commands())
def test_python_command_flags(command):
  """The module exists and its parser accepts the command's arguments."""
  assert importlib.util.find_spec(command.module), command
  args = command.args
  if command.module == "autoselect_jax.train":
    parse_train(args)
    return
  if command.module == "autoselect_jax.launch.local":
    assert "--" in args, command
    ns = parse_only(command.module, args)  # Its own options.
    assert ns.num_processes >= 1
    parse_train(args[args.index("--") + 1:])  # What each process runs.
    return
  parse_only(command.module, args)


@pytest.mark.parametrize("command", [
    pytest.param(c, id=f"L{c.line}") for c in readme_commands()
    if launcher_train_args(c) is not None])
def test_launcher_trainer_arguments(command):
  """CONFIG_OVERRIDES, with the config and workdir the launcher adds."""
  parse_train(launcher_train_args(command))


def test_shell_commands():
  """pip's requirement files exist; the pytest command is CI's."""
  for c in readme_commands():
    if c.words[:2] == ("pip", "install"):
      files = [c.words[i + 1] for i, w in enumerate(c.words) if w == "-r"]
      assert files, c
      for f in files:
        assert os.path.isfile(os.path.join(ROOT, f)), c
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = f.read()
  assert "python3 -m pytest -q" in ci
  assert "-r requirements.txt -r requirements-test.txt" in ci


def _script_settings(path: str) -> set[str]:
  """The environment settings a launcher script reads (`: "${NAME:=...}"`)."""
  with open(path) as f:
    return set(re.findall(r'^: "\$\{(\w+):=', f.read(), re.M))


FAKE_SCONTROL = textwrap.dedent("""\
    #!/bin/sh
    if [ "$1 $2" = "show hostnames" ]; then
      printf 'node001\\nnode002\\n'
    fi
    """)


def test_launcher_commands(tmp_path):
  """The README's launcher lines, as written, in DRY_RUN=1 mode: no gcloud,
  no SLURM (a fake scontrol and job environment); each setting the README
  sets is one the script reads."""
  base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
  (bin_dir / "scontrol").chmod(0o755)
  slurm = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[001-002]",
           "SLURM_NTASKS": "16", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_SUBMIT_DIR": ROOT, "CUDA_VISIBLE_DEVICES": "0"}
  ran = 0
  for c in readme_commands():
    if c.module or c.words[0] in ("pip",):
      continue
    env = dict(c.env)
    if c.words[0] == "sbatch":
      script = os.path.join(ROOT, c.words[-1])
      argv = ["bash", script]
      run_env = {**base, **env, **slurm, "DRY_RUN": "1"}
    else:
      script = os.path.join(ROOT, c.words[0])
      argv = ["bash", script, *c.words[1:]]
      run_env = {**base, **env, "DRY_RUN": env.get("DRY_RUN", "1")}
    assert set(env) <= _script_settings(script), (c, _script_settings(script))
    r = subprocess.run(argv, env=run_env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"{c}\n{r.stdout}{r.stderr}"
    lines = r.stdout.splitlines()
    assert lines, c
    if "CONFIG_OVERRIDES" in env:  # The overrides reach the trainer.
      for arg in shlex.split(env["CONFIG_OVERRIDES"]):
        assert arg in r.stdout, (c, r.stdout)
    ran += 1
  assert ran >= 7


def test_convert_big_vision(tiny_world, tmp_path):
  """The README's big_vision conversion (into a fresh folder: the fixture's
  HF conversion already wrote ckpt/pg224) gives the HF conversion's model."""
  from autoselect_jax.checkpoints import store
  (c,) = commands_for("autoselect_jax.convert --big-vision --tokenizer --out")
  run_main(c, str(tmp_path), tiny_world)
  assert store.load_config(str(tmp_path / "ckpt" / "pg224")) == (
      store.load_config(os.path.join(tiny_world, "ckpt", "pg224")))


def test_generate_full_model(tiny_world, capsys):
  (c,) = commands_for("autoselect_jax.generate --checkpoint --image --prompt "
                      "--max-new-tokens --json")
  run_main(c, tiny_world, tiny_world)
  (line,) = _json_lines(capsys.readouterr().out)
  assert line["prompt"] == "caption en" and line["kept"] == list(range(256))
  assert 1 <= len(line["ids"]) <= 20


def test_pruned_generation_cli_and_python(tiny_world, capsys):
  (c,) = commands_for("autoselect_jax.generate --checkpoint --scorer --k "
                      "--image --image --prompt --max-new-tokens --json")
  run_main(c, tiny_world, tiny_world)
  lines = _json_lines(capsys.readouterr().out)
  assert [l["image"] for l in lines] == ["cat.jpg", "dog.jpg"]
  assert all(len(l["kept"]) == 64 for l in lines)
  out = _exec_block(python_block("Pipeline.from_checkpoint("), tiny_world,
                    tiny_world)
  (r,) = out
  assert set(r) >= {"ids", "text", "kept"} and len(r["kept"]) == 64
  assert r["ids"] == lines[0]["ids"] and r["kept"] == lines[0]["kept"]


def test_evaluation_commands(tiny_world, capsys):
  """run (AutoSelect and full), score, report, visualize, in README order,
  next to the training workdir runs/pg224 (report's glob must skip it)."""
  order = [
      "autoselect_jax.evaluate run --checkpoint --scorer --method --k "
      "--benchmark --data --out",
      "autoselect_jax.evaluate run --checkpoint --method --benchmark --data "
      "--out",
      "autoselect_jax.evaluate score --benchmark --data --predictions",
      "autoselect_jax.evaluate report --out",
      "autoselect_jax.visualize --checkpoint --scorer --image --method --k "
      "--out"]
  assert os.path.isdir(os.path.join(tiny_world, "runs", "pg224"))
  for sig in order:
    for c in commands_for(sig):
      run_main(c, tiny_world, tiny_world)
  capsys.readouterr()
  for run in ("gqa_as64", "gqa_full"):
    with open(os.path.join(tiny_world, "runs", run, "metrics.json")) as f:
      assert json.load(f)["benchmark"] == "gqa"
  with open(os.path.join(tiny_world, "report.json")) as f:
    rows = json.load(f)["rows"]
  assert {(r["method"], r["k"]) for r in rows} == {("full", None),
                                                   ("autoselect", 64)}
  with open(os.path.join(tiny_world, "cat.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _readme_data(root: str) -> tuple[str, list[dict]]:
  """Writes the README's JSONL example to root/data/train.jsonl (and
  val.jsonl), with an image at every path it names; returns the path and
  the records."""
  import hf_reference
  (body,) = [b for _, b in blocks(_readme_text(), "json")]
  text = substitute(body, root)
  records = [json.loads(l) for l in text.splitlines() if l.strip()]
  data = os.path.join(root, "data")
  images = hf_reference.random_images(len(records), 64, seed=5)
  for rec, image in zip(records, images):
    path = rec["image"]
    path = path if os.path.isabs(path) else os.path.join(data, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)
  for name in ("train.jsonl", "val.jsonl"):
    with open(os.path.join(data, name), "w") as f:
      f.write(text)
  return os.path.join(data, "train.jsonl"), records


def _config_values(command: Command, root: str) -> dict[str, str]:
  """--config.data.FIELD=VALUE of a README train command, as bash gives them."""
  out = {}
  for w in expand(command, root, root):
    if w.startswith("--config.data."):
      k, v = w[len("--config.data."):].split("=", 1)
      out[k] = v
  return out


def test_data_examples_read_through_the_trainer(tiny_world):
  """The JSONL and Parquet examples, read by the trainer's own source
  (`pipeline.make_source` with the README command's data fields) and
  preprocessed into a training example."""
  import numpy as np
  from autoselect_jax.checkpoints import store
  from autoselect_jax.data import pipeline
  from autoselect_jax.data.processor import Processor
  ckpt = os.path.join(tiny_world, "ckpt", "pg224")
  preprocess = pipeline.Preprocess(
      Processor.from_checkpoint(ckpt, store.load_config(ckpt)), 64)

  path, records = _readme_data(tiny_world)
  (jsonl,) = commands_for(
      "autoselect_jax.train --config --workdir --config.model.checkpoint "
      "--config.data.train_path --config.data.val_path")
  fields = _config_values(jsonl, tiny_world)
  assert fields["train_path"] == path
  source = pipeline.make_source("jsonl", fields["train_path"])
  assert len(source) == len(records) == 2
  assert (source[0]["prefix"], source[0]["suffix"]) == (
      "caption en", records[0]["caption"])
  assert (source[1]["prefix"], source[1]["suffix"]) == (
      records[1]["prefix"], records[1]["suffix"])
  for i in range(len(source)):
    example = preprocess.map(source[i])
    assert example["valid"] and example["loss_mask"].any()

  _exec_block(python_block("pq.write_table(table,"), tiny_world, tiny_world)
  (parquet,) = commands_for(
      "autoselect_jax.train --config --workdir --config.model.checkpoint "
      "--config.data.source --config.data.train_path")
  fields = _config_values(parquet, tiny_world)
  assert fields["source"] == "parquet"
  source = pipeline.make_source("parquet", fields["train_path"])
  assert len(source) == 1
  row = source[0]
  assert row["prefix"] == "caption en"
  assert row["suffix"] == "a cat sleeping on a red sofa"
  example = preprocess.map(row)
  assert example["valid"] and np.isfinite(example["image"]).all()


def _train_env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


@pytest.mark.slow
def test_training_commands(tiny_world):
  """The README's two training commands, for real, on the tiny checkpoint
  and the README's data examples (copied to fill a batch), with TINY_TRAIN's
  few steps; then pruned generation with the Scorer the JSONL run exported."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  path, _ = _readme_data(tiny_world)
  with open(path) as f:
    lines = f.read().strip().split("\n")
  for name in ("train.jsonl", "val.jsonl"):  # Four copies: one batch of 4+.
    with open(os.path.join(os.path.dirname(path), name), "w") as f:
      f.write("\n".join(lines * 4) + "\n")
  _exec_block(python_block("pq.write_table(table,"), tiny_world, tiny_world)
  (parquet,) = commands_for(
      "autoselect_jax.train --config --workdir --config.model.checkpoint "
      "--config.data.source --config.data.train_path")
  (pattern,) = [v for k, v in _config_values(parquet, tiny_world).items()
                if k == "train_path"]
  (file,) = glob.glob(pattern)
  table = pq.read_table(file)
  pq.write_table(pa.concat_tables([table] * 4), file)

  for sig in ["autoselect_jax.train --config --workdir "
              "--config.model.checkpoint --config.data.train_path "
              "--config.data.val_path",
              "autoselect_jax.train --config --workdir "
              "--config.model.checkpoint --config.data.source "
              "--config.data.train_path"]:
    (c,) = commands_for(sig)
    words = expand(c, tiny_world, tiny_world)
    r = subprocess.run([sys.executable, *words[1:], *TINY_TRAIN],
                       cwd=tiny_world, env=_train_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "finished at step 2" in r.stdout, r.stdout[-2000:]
    workdir = words[words.index("--workdir") + 1]
    scorer = os.path.join(tiny_world, workdir, "scorer")
    assert os.path.isfile(os.path.join(scorer, "scorer_config.json"))
  # runs/pg224/scorer is now the trained Scorer: generate with it.
  (c,) = commands_for("autoselect_jax.generate --checkpoint --scorer --k "
                      "--image --image --prompt --max-new-tokens --json")
  words = expand(c, tiny_world, tiny_world)
  r = subprocess.run([sys.executable, *words[1:]], cwd=tiny_world,
                     env=_train_env(), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert [len(l["kept"]) for l in _json_lines(r.stdout)] == [64, 64]


@pytest.mark.slow
def test_bench_on_a_converted_checkpoint(tiny_world):
  (c,) = commands_for("autoselect_jax.bench --checkpoint --k --batch --out")
  run_main(c, tiny_world, tiny_world)
  words = expand(c, tiny_world, tiny_world)
  with open(os.path.join(tiny_world, words[words.index("--out") + 1])) as f:
    result = json.load(f)
  assert result["complete"] is True
  assert {(r["batch"], r["k"]) for r in result["records"]} >= {
      (1, 64), (8, 192)}
