"""Timing helpers and the device's own peaks (matmul FLOP/s, memory bytes/s)."""

from __future__ import annotations

import statistics
import sys
import time

# Kernel sizes for the peak measurements, per platform.
MATMUL_N = {"cpu": 2048, "gpu": 16384}
BANDWIDTH_BYTES = {"cpu": 256 * 2 ** 20, "gpu": 2 * 2 ** 30}


class Log:
  """Progress lines on stderr, with the elapsed time."""

  def __init__(self):
    self.t0 = time.perf_counter()

  def __call__(self, msg: str) -> None:
    print(f"[bench {time.perf_counter() - self.t0:6.1f}s] {msg}",
          file=sys.stderr, flush=True)


def timed(fn, *args):
  """(seconds, output) of one call, waited for."""
  import jax
  t0 = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return time.perf_counter() - t0, out


def process_peak(device) -> tuple[str, float]:
  """(source, bytes) of the memory high-water mark so far: the device's
  `peak_bytes_in_use` where JAX reports it (GPU, TPU), else the process's
  peak resident set size (CPU: the arrays live in host memory)."""
  import resource
  mem = device.memory_stats() or {}
  if "peak_bytes_in_use" in mem:
    return "device peak_bytes_in_use", float(mem["peak_bytes_in_use"])
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB.
  return "process peak RSS", float(kib * 1024)


# Environment variables that change how the host allocates memory. On XLA
# CPU they change speed: see docs/benchmark.md, "The host allocator".
ALLOCATOR_ENV_PREFIXES = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD")


def host_allocator() -> dict:
  """The allocator settings this process started with ({name: value} of the
  MALLOC_* / GLIBC_TUNABLES / LD_PRELOAD variables; {} = glibc's defaults),
  recorded beside CPU timings because they move them."""
  import os
  return {k: v for k, v in sorted(os.environ.items())
          if k.startswith(ALLOCATOR_ENV_PREFIXES)}


# glibc settings under which XLA CPU's large temporaries are reused instead of
# mapped afresh (and page-faulted in) on every call: one arena (a thread's own
# arena cannot hold a buffer over 64 MiB and maps it), no mmap, no trimming.
CPU_ALLOCATOR_ENV = ("MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 "
                     "MALLOC_TRIM_THRESHOLD_=17179869184")


def allocator_hint(platform: str) -> str | None:
  """A line for the log when CPU timings run under glibc's default allocator
  (None on other platforms or when allocator variables are set)."""
  if platform != "cpu" or host_allocator():
    return None
  return ("glibc's default allocator: on XLA CPU, temporaries over 32 MiB are "
          "mapped and page-faulted in on every call; for timings run with "
          f"{CPU_ALLOCATOR_ENV} (docs/benchmark.md, 'The host allocator')")


def minor_faults() -> int:
  """Minor page faults of this process so far (first touches of fresh
  memory: on CPU, memory the allocator mapped anew)."""
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def stats(seconds: list[float], name: str, scale: float = 1.0) -> dict:
  """Median / min / max in milliseconds, as name, name_min, name_max."""
  ms = [s * 1e3 / scale for s in seconds]
  return {name: statistics.median(ms), f"{name}_min": min(ms),
          f"{name}_max": max(ms)}


def measure_peak_flops(dtype, platform: str, repeats: int = 5) -> dict:
  """Best FLOP/s of a square (n, n) @ (n, n) matmul in `dtype`."""
  import jax
  import jax.numpy as jnp
  n = MATMUL_N.get(platform, MATMUL_N["gpu"])
  ka, kb = jax.random.split(jax.random.key(1))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  f = jax.jit(jnp.matmul)
  timed(f, a, b)
  best = min(timed(f, a, b)[0] for _ in range(repeats))
  return {"kernel": f"matmul {n}x{n}x{n}", "flops_per_s": 2 * n ** 3 / best}


def measure_bandwidth(dtype, platform: str, repeats: int = 5) -> dict:
  """Best bytes/s of a sum (reads) and of x * 2 + 1 (reads + writes)."""
  import jax
  import jax.numpy as jnp
  nbytes = BANDWIDTH_BYTES.get(platform, BANDWIDTH_BYTES["gpu"])
  x = jnp.ones((nbytes // jnp.dtype(dtype).itemsize,), dtype)
  kernels = {"sum": (jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32)), nbytes),
             "x*2+1": (jax.jit(lambda x: x * 2 + 1), 2 * nbytes)}
  rates = {}
  for name, (f, moved) in kernels.items():
    timed(f, x)
    rates[name] = moved / min(timed(f, x)[0] for _ in range(repeats))
  del x
  return {"kernels": {k: float(v) for k, v in rates.items()},
          "array_bytes": nbytes, "bytes_per_s": float(max(rates.values()))}


def device_peaks(dtype, device, log) -> tuple[dict, dict]:
  """(matmul peak, bandwidth) of `device` in `dtype`, logged as measured."""
  log(f"measuring peaks on {device.device_kind} ({device.platform}), "
      f"{dtype.name}")
  peak = measure_peak_flops(dtype, device.platform)
  bw = measure_bandwidth(dtype, device.platform)
  log(f"peak {peak['flops_per_s'] / 1e9:,.0f} GFLOP/s, "
      f"{bw['bytes_per_s'] / 1e9:,.1f} GB/s")
  return peak, bw


def time_rounds(calls, repeats: int, log, faults: dict | None = None) -> dict:
  """{key: [seconds per round]} of `calls`, a list of (key, fn, args).

  Interleaved: each round calls every function once, in order, so load
  drifting on a shared machine hits all of them alike. faults: if given, a
  dict filled with {key: [minor page faults per round]} (`minor_faults`).
  """
  times = {}
  for r in range(repeats):
    log(f"round {r + 1}/{repeats}")
    for key, fn, args in calls:
      before = minor_faults()
      times.setdefault(key, []).append(timed(fn, *args)[0])
      if faults is not None:
        faults.setdefault(key, []).append(minor_faults() - before)
  return times
