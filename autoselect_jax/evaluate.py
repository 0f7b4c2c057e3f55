"""Benchmark evaluation of the full model, AutoSelect and every baseline.

  python -m autoselect_jax.evaluate run --checkpoint DIR [--scorer DIR] \\
      --method autoselect --k 64 --benchmark vqav2 --data PATH \\
      [--images DIR] [--limit N] [--batch-size B] [--dtype bfloat16] --out RUN
  python -m autoselect_jax.evaluate score --benchmark vqav2 --data PATH \\
      --predictions FILE --out metrics.json
  python -m autoselect_jax.evaluate report RUN [RUN ...] --out report.md

`run` writes RUN/run.json, RUN/predictions.jsonl and RUN/metrics.json and
resumes a killed run (`evaluation.runner`); `score` re-scores saved
predictions without a model; `report` writes the retention table
(`evaluation.report`). Benchmarks and their local layouts:
`evaluation/benchmarks/`, one module each.
"""

from __future__ import annotations

import argparse
import json
import sys


def _add_data_args(p, registry_names):
  p.add_argument("--benchmark", required=True, choices=registry_names)
  p.add_argument("--data", default=None,
                 help="the benchmark's local files (see its module)")
  p.add_argument("--images", default=None,
                 help="image folder, if not the benchmark's default place")
  p.add_argument("--limit", type=int, default=None,
                 help="the first N questions only")
  p.add_argument("--prompt", default=None,
                 help="prompt template (default: the benchmark's)")


def _parser():
  from autoselect_jax.evaluation.registry import BENCHMARK_NAMES
  parser = argparse.ArgumentParser(
      prog="python -m autoselect_jax.evaluate", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  r = sub.add_parser("run", help="generate answers and score them")
  r.add_argument("--checkpoint", required=True,
                 help="folder written by autoselect_jax.convert")
  r.add_argument("--scorer", default=None,
                 help="exported Scorer folder (WORKDIR/scorer)")
  r.add_argument("--method", default=None,
                 help="autoselect (default with --scorer), full (default "
                 "without), random, grid, norm, attention, divprune, "
                 "visionzip, fastv")
  r.add_argument("--k", type=int, default=None,
                 help="visual tokens kept (default: all N)")
  _add_data_args(r, BENCHMARK_NAMES)
  r.add_argument("--batch-size", type=int, default=8)
  r.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16"))
  r.add_argument("--policy", default=None, choices=("original", "packed"))
  r.add_argument("--seed", type=int, default=0,
                 help="seeds the random baseline")
  r.add_argument("--fastv-layer", type=int, default=2,
                 help="FastV prunes after this decoder layer")
  r.add_argument("--max-new-tokens", type=int, default=None)
  r.add_argument("--save-vis", default=None, metavar="DIR",
                 help="also draw the kept tokens and scores of the first "
                 "examples, one PNG each")
  r.add_argument("--vis-count", type=int, default=16,
                 help="how many examples --save-vis draws")
  r.add_argument("--out", required=True, help="the run folder")

  s = sub.add_parser("score", help="re-score saved predictions")
  _add_data_args(s, BENCHMARK_NAMES)
  s.add_argument("--predictions", required=True,
                 help="JSONL with the example key and 'answer' per line")
  s.add_argument("--out", default=None, help="metrics JSON (default: print)")

  p = sub.add_parser("report", help="the retention table of finished runs")
  p.add_argument("runs", nargs="+", metavar="RUN_DIR")
  p.add_argument("--out", required=True, help="report.md (and report.json)")
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "run":
      return _run(args)
    if args.command == "score":
      from autoselect_jax.evaluation.runner import score_file
      metrics = score_file(args.benchmark, args.predictions, data=args.data,
                           images=args.images, limit=args.limit,
                           prompt=args.prompt)
      text = json.dumps(metrics, indent=2, sort_keys=True)
      if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
          f.write(text + "\n")
      print(text)
      return 0
    from autoselect_jax.evaluation.report import to_markdown, write_report
    print(to_markdown(write_report(args.runs, args.out)))
    return 0
  except (FileNotFoundError, ValueError) as e:
    print(f"evaluate {args.command}: error: {e}", file=sys.stderr)
    return 2


def _run(args) -> int:
  from autoselect_jax.evaluation.runner import RunSpec, run
  method = args.method or ("autoselect" if args.scorer else "full")
  spec = RunSpec(checkpoint=args.checkpoint, benchmark=args.benchmark,
                 method=method, k=args.k, scorer=args.scorer, data=args.data,
                 images=args.images, limit=args.limit, prompt=args.prompt,
                 policy=args.policy, dtype=args.dtype, seed=args.seed,
                 fastv_layer=args.fastv_layer,
                 max_new_tokens=args.max_new_tokens,
                 batch_size=args.batch_size)
  on_batch, generate = None, None
  if args.save_vis:
    from autoselect_jax.evaluation.runner import (pipeline_generate,
                                                  vis_callback)
    on_batch = vis_callback(args.save_vis, spec, args.vis_count)
    generate = pipeline_generate(spec, scores_for=args.vis_count)
  metrics = run(spec, args.out, generate=generate, on_batch=on_batch)
  print(json.dumps(metrics, indent=2, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
