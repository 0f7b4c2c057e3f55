"""`evaluate run`: batched generation over a benchmark, resumable, then its metric.

A run folder holds

  run.json           what was asked (checkpoint, scorer, method, K,
                     benchmark, data, limit, prompt, ...) and the versions
  predictions.jsonl  one line per example, appended batch by batch:
                     {key_field: key, "prompt", "answer" (the raw
                     prediction), "kept" (visual token indices)}
  metrics.json       the benchmark's metrics, written when every example
                     has a prediction

A killed run started again with the same arguments resumes: complete lines
are kept (a torn last line is cut off), their examples are skipped, and the
rest run in the same order and batches. Arguments that would change the
predictions must match the first run's run.json, or the run stops with the
fields that differ. Images of the next batch are read and resized on a
background thread while the device works on the current one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import platform
from typing import Callable, Optional, Sequence

import numpy as np

from autoselect_jax.evaluation.benchmark import Benchmark, Example, load_image
from autoselect_jax.evaluation.registry import get_benchmark
from autoselect_jax.progress import Progress

RUN_FILE, PREDICTIONS_FILE, METRICS_FILE = ("run.json", "predictions.jsonl",
                                            "metrics.json")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything that determines a run's predictions."""
  checkpoint: str
  benchmark: str
  method: str = "full"
  k: Optional[int] = None          # None: all N visual tokens.
  scorer: Optional[str] = None
  data: Optional[str] = None
  images: Optional[str] = None
  limit: Optional[int] = None
  prompt: Optional[str] = None     # None: the benchmark's own template.
  policy: Optional[str] = None     # None: the Scorer's training policy.
  dtype: str = "float32"
  seed: int = 0                    # The random baseline's seed.
  fastv_layer: int = 2
  max_new_tokens: Optional[int] = None  # None: the benchmark's default.
  batch_size: int = 8

  def __post_init__(self):
    if isinstance(self.batch_size, bool) or not isinstance(
        self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got "
                       f"{self.batch_size!r}")
    if self.k is not None and (isinstance(self.k, bool) or not isinstance(
        self.k, int) or self.k < 1):
      raise ValueError(f"k must be a positive int, got {self.k!r}")
    from autoselect_jax.inference.pruners import METHODS
    if self.method not in METHODS:
      raise ValueError(f"unknown method {self.method!r}; choose from "
                       f"{', '.join(METHODS)}")
    if self.method == "full" and self.k is not None:
      raise ValueError(f"method 'full' keeps all N visual tokens; drop "
                       f"k={self.k} (or pick a pruning method)")
    if self.method != "full" and self.k is None:
      raise ValueError(f"method {self.method!r} needs k (visual tokens kept)")
    if (self.method == "autoselect") != (self.scorer is not None):
      raise ValueError("method 'autoselect' needs a Scorer (--scorer DIR) "
                       "and only it uses one")
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be positive, got "
                       f"{self.max_new_tokens}")


def _atomic_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def versions() -> dict:
  import flax
  import jax
  import autoselect_jax
  return {"autoselect_jax": getattr(autoselect_jax, "__version__", "dev"),
          "jax": jax.__version__, "flax": flax.__version__,
          "python": platform.python_version()}


def _absolute(path: Optional[str]) -> Optional[str]:
  """Absolute paths for files; other --data values (synthetic) unchanged."""
  return os.path.abspath(path) if path and os.path.exists(path) else path


def check_run_file(out_dir: str, spec: RunSpec, num_examples: int) -> None:
  """Writes run.json, or checks a resumed run asks for the same thing."""
  path = os.path.join(out_dir, RUN_FILE)
  asked = dataclasses.asdict(spec)
  for field in ("checkpoint", "scorer", "data", "images"):
    asked[field] = _absolute(asked[field])
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      before = json.load(f)
    diff = {f: (before.get("spec", {}).get(f), v) for f, v in asked.items()
            if before.get("spec", {}).get(f) != v}
    if diff:
      lines = ", ".join(f"{f}: {a!r} before, {b!r} now"
                        for f, (a, b) in sorted(diff.items()))
      raise ValueError(f"{out_dir} holds a run with other arguments ({lines});"
                       " use another --out folder or the same arguments")
    if before.get("num_examples") != num_examples:
      raise ValueError(f"{out_dir}: the benchmark now has {num_examples} "
                       f"examples, the run started with "
                       f"{before.get('num_examples')}; the data changed")
    return
  _atomic_json(path, {"spec": asked, "num_examples": num_examples,
                      "versions": versions()})


def read_done(path: str, key_field: str, keys: set) -> dict:
  """{key: prediction line} of a predictions file, cutting a torn last line.

  Lines for keys outside `keys`, repeated keys and corrupt complete lines
  are errors naming the line: they mean the file is not this run's.
  """
  done = {}
  if not os.path.exists(path):
    return done
  with open(path, "rb") as f:
    raw = f.read()
  end = raw.rfind(b"\n") + 1
  if end < len(raw):  # A kill mid-write: drop the partial line.
    with open(path, "r+b") as f:
      f.truncate(end)
  for n, line in enumerate(raw[:end].decode("utf-8").splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      key = row[key_field]
    except (json.JSONDecodeError, KeyError, TypeError):
      raise ValueError(f"{path}:{n}: not a prediction line with "
                       f"'{key_field}'") from None
    if key not in keys:
      raise ValueError(f"{path}:{n}: {key_field}={key!r} is not an example "
                       "of this benchmark run")
    if key in done:
      raise ValueError(f"{path}:{n}: {key_field}={key!r} appears twice")
    done[key] = row
  return done


def _load_batch(examples: Sequence[Example], size: int) -> list[np.ndarray]:
  """uint8 (S, S, 3) images, decoded and resized once (host-side work)."""
  from PIL import Image  # The resize filter of `data.processor`.
  out = []
  for e in examples:
    im = load_image(e.image)
    if isinstance(im, np.ndarray):
      if im.shape[:2] == (size, size):
        out.append(im)
        continue
      im = Image.fromarray(im)
    if isinstance(im, (str, os.PathLike)):
      with Image.open(im) as f:
        im = f.convert("RGB")
    im = im.convert("RGB")
    if im.size != (size, size):
      im = im.resize((size, size), resample=Image.Resampling.BICUBIC)
    out.append(np.asarray(im, np.uint8))
  return out


GenerateFn = Callable[[list, list, int], list]


def run(spec: RunSpec, out_dir: str, *, generate: Optional[
    Callable[[], tuple[GenerateFn, int]]] = None,
        benchmark: Optional[Benchmark] = None, progress_stream=None,
        on_batch: Optional[Callable[[list, list, list], None]] = None
        ) -> dict:
  """Runs (or resumes) `spec` into `out_dir`; returns the metrics.

  generate: a factory returning (fn(images, prompts, max_new_tokens) ->
    [{"text", "kept"}], image size); default: a `Pipeline` from the spec.
    Built only if something is left to run.
  on_batch(examples, results, images): called after each batch is written,
    with the batch's uint8 images (the pictures of `--save-vis` use it).
  """
  bench = benchmark or get_benchmark(
      spec.benchmark, **({"prompt": spec.prompt} if spec.prompt else {}))
  examples = bench.load(spec.data, spec.images, spec.limit)
  if not examples:
    raise ValueError(f"{spec.benchmark}: no examples in {spec.data}")
  keys = [e.key for e in examples]
  if len(set(keys)) != len(keys):
    raise ValueError(f"{spec.benchmark}: example keys are not unique")
  os.makedirs(out_dir, exist_ok=True)
  check_run_file(out_dir, spec, len(examples))
  pred_path = os.path.join(out_dir, PREDICTIONS_FILE)
  done = read_done(pred_path, bench.key_field, set(keys))
  todo = [e for e in examples if e.key not in done]
  max_new = spec.max_new_tokens or bench.max_new_tokens
  if todo:
    fn, size = (generate or pipeline_generate(spec))()
    bar = Progress(len(examples), f"{spec.benchmark} {spec.method} "
                   f"k={spec.k or 'N'}", initial=len(done),
                   stream=progress_stream)
    b = spec.batch_size
    batches = [todo[i:i + b] for i in range(0, len(todo), b)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool, \
        open(pred_path, "a", encoding="utf-8") as out:
      nxt = pool.submit(_load_batch, batches[0], size)
      for i, batch in enumerate(batches):
        images = nxt.result()
        if i + 1 < len(batches):
          nxt = pool.submit(_load_batch, batches[i + 1], size)
        pad = b - len(batch)  # One shape for every batch: one compile.
        results = fn(images + images[-1:] * pad,
                     [e.prompt for e in batch] + [batch[-1].prompt] * pad,
                     max_new)[:len(batch)]
        lines = []
        for e, r in zip(batch, results):
          row = {bench.key_field: e.key, "prompt": e.prompt,
                 "answer": r["text"], "kept": r["kept"]}
          done[e.key] = row
          lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        out.write("".join(lines))
        out.flush()
        os.fsync(out.fileno())
        if on_batch is not None:
          on_batch(batch, results, images[:len(batch)])
        bar.update(len(batch))
    bar.close()
  answers = {key: str(row["answer"]) for key, row in done.items()}
  metrics = finish_metrics(bench, examples, answers, spec)
  _atomic_json(os.path.join(out_dir, METRICS_FILE), metrics)
  return metrics


def finish_metrics(bench: Benchmark, examples, answers, spec: RunSpec) -> dict:
  metrics = bench.score(examples, answers)
  if bench.headline not in metrics:
    raise ValueError(f"{bench.name}: headline metric {bench.headline!r} is "
                     f"missing from its metrics {sorted(metrics)}")
  return {"benchmark": bench.name, "method": spec.method, "k": spec.k,
          "headline": bench.headline, "score": metrics[bench.headline],
          "metrics": metrics}


def pipeline_generate(spec: RunSpec, scores_for: int = 0
                      ) -> Callable[[], tuple[GenerateFn, int]]:
  """The default generator: a Pipeline from the spec's checkpoint.

  scores_for: the first this many examples' results also get "scores" (the
  method's per-token scores, or None) and "grid" (tokens per side), for
  `vis_callback`.
  """
  def make():
    from autoselect_jax.inference.pipeline import Pipeline
    pipe = Pipeline.from_checkpoint(spec.checkpoint, spec.dtype,
                                    scorer_dir=spec.scorer,
                                    policy=spec.policy, method=spec.method,
                                    seed=spec.seed,
                                    fastv_layer=spec.fastv_layer)
    grid = math.isqrt(pipe.vlm.num_visual_tokens)
    seen = [0]

    def fn(images, prompts, max_new_tokens):
      out = pipe.generate(images, prompts, k=spec.k,
                          max_new_tokens=max_new_tokens, seed=spec.seed)
      if seen[0] < scores_for:
        chosen = ([None] * len(images) if spec.method == "fastv" else
                  pipe.select(images, spec.k))
        for r, sel in zip(out, chosen):
          r["scores"] = None if sel is None else sel["scores"]
          r["grid"] = grid
      seen[0] += len(images)
      return out
    return fn, pipe.processor.image_size
  return make


def vis_callback(out_dir: str, spec: RunSpec, count: int = 16):
  """`on_batch` drawing the first `count` examples: the image with the kept
  patches highlighted and the method's score heat map, one PNG per example
  at out_dir/<key>.png (`figures.pictures`)."""
  from autoselect_jax.figures import pictures
  drawn = [0]

  def on_batch(examples, results, images):
    for e, r, im in zip(examples, results, images):
      if drawn[0] >= count or "grid" not in r:
        return
      k = "all" if spec.k is None else spec.k
      panel = pictures.Panel(f"{spec.method} K={k}", np.asarray(r["kept"]),
                             None if r.get("scores") is None
                             else np.asarray(r["scores"], np.float32))
      name = "".join(c if c.isalnum() or c in "-_." else "_"
                     for c in str(e.key))
      pictures.draw_selections(im, r["grid"], [panel],
                               os.path.join(out_dir, f"{name}.png"),
                               title=f"{e.prompt} -> {r['text']}")
      drawn[0] += 1
  return on_batch


def score_file(benchmark: str, predictions: str, *, data=None, images=None,
               limit=None, prompt=None) -> dict:
  """`evaluate score`: the metrics of saved predictions, no model."""
  bench = get_benchmark(benchmark, **({"prompt": prompt} if prompt else {}))
  examples = bench.load(data, images, limit)
  answers = bench.read_predictions(predictions)
  metrics = bench.score(examples, answers)
  return {"benchmark": bench.name, "headline": bench.headline,
          "score": metrics[bench.headline], "metrics": metrics,
          "predictions": os.path.abspath(predictions)}

