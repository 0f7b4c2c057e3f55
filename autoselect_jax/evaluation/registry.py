"""Benchmark names -> classes (imported on first use)."""

from __future__ import annotations

import importlib

from autoselect_jax.evaluation.benchmark import Benchmark

_BENCHMARKS = {
    "vqav2": "vqav2:VQAv2",
    "gqa": "gqa:GQA",
    "textvqa": "textvqa:TextVQA",
    "vizwiz": "vizwiz:VizWiz",
    "pope": "pope:POPE",
    "mme": "mme:MME",
    "mmbench": "mmbench:MMBench",
    "mmbench_cn": "mmbench:MMBenchCN",
    "scienceqa": "scienceqa:ScienceQA",
    "seed": "seed:SEEDBench",
    "synthetic": "synthetic:Synthetic",
}
BENCHMARK_NAMES = tuple(_BENCHMARKS)


def get_benchmark(name: str, **kwargs) -> Benchmark:
  """An instance of the benchmark `name` (kwargs: e.g. prompt=)."""
  if name not in _BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; choose from "
                     f"{', '.join(BENCHMARK_NAMES)}")
  module, cls = _BENCHMARKS[name].split(":")
  mod = importlib.import_module(f"autoselect_jax.evaluation.benchmarks.{module}")
  return getattr(mod, cls)(**kwargs)
