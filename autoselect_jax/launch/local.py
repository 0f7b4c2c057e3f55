"""Runs the trainer as N JAX processes on this machine's CPU, coordinated over
loopback: the same multi-process entry point a TPU pod or a SLURM job runs.

  python -m autoselect_jax.launch.local --num-processes 2 -- \\
      --config configs/demo.py --workdir /tmp/demo_2proc

Everything after `--` goes to `python -m autoselect_jax.train`, except the
--config.distributed.* fields, which the launcher sets: process i gets
--config.distributed.initialize=yes, coordinator_address=127.0.0.1:PORT,
num_processes=N and process_id=i, with JAX_PLATFORMS=cpu and
XLA_FLAGS=--xla_force_host_platform_device_count=D. Output lines are prefixed
with [i] (or go to LOG_DIR/process_i.log). When a process fails the others
are stopped (SIGTERM, then SIGKILL after --grace seconds) and the launcher
exits non-zero naming it; SIGINT and SIGTERM are forwarded to every process.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

PROG = "python -m autoselect_jax.launch.local"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
DISTRIBUTED_PREFIX = "--config.distributed."
POLL_SECONDS = 0.05
LOG_TAIL_LINES = 20


def free_port() -> int:
  """A TCP port that is free on 127.0.0.1 now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _error(message: str) -> None:
  print(f"launch.local: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """(launcher options, trainer arguments), split at the first `--`."""
  parser = argparse.ArgumentParser(
      prog=PROG, usage=f"{PROG} --num-processes N [options] -- TRAIN_ARGS...",
      description="Runs `python -m autoselect_jax.train TRAIN_ARGS` as N CPU "
      "processes coordinated over 127.0.0.1.")
  parser.add_argument("--num-processes", "-n", type=int, required=True,
                      help="number of JAX processes")
  parser.add_argument("--devices-per-process", type=int, default=1,
                      help="CPU devices each process sees (default 1)")
  parser.add_argument("--port", type=int, default=0,
                      help="coordinator port on 127.0.0.1 (default: a free "
                      "one)")
  parser.add_argument("--log-dir", help="write process i's output to "
                      "LOG_DIR/process_i.log instead of the console")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds from SIGTERM to SIGKILL when stopping "
                      "processes (default 10)")
  parser.add_argument("--module", default="autoselect_jax.train",
                      help="module each process runs with python -m "
                      "(default autoselect_jax.train)")
  parser.add_argument("--dry-run", action="store_true",
                      help="print each process's command and exit")
  if "--" in argv:
    split = argv.index("--")
    own, rest = argv[:split], argv[split + 1:]
  else:
    own, rest = argv, []
  args = parser.parse_args(own)
  if args.num_processes < 1:
    parser.error(f"--num-processes must be >= 1, got {args.num_processes}")
  if args.devices_per_process < 1:
    parser.error("--devices-per-process must be >= 1, got "
                 f"{args.devices_per_process}")
  if not 0 <= args.port <= 65535:
    parser.error(f"--port must be in 0..65535, got {args.port}")
  if not rest:
    parser.error("no trainer arguments: put them after '--', e.g. -- "
                 "--config configs/demo.py --workdir /tmp/run")
  for arg in rest:
    if arg.startswith(DISTRIBUTED_PREFIX):
      parser.error(f"{arg.split('=', 1)[0]} is set by the launcher for each "
                   "process; remove it from the trainer arguments")
  return args, rest


def process_command(module: str, train_args: list[str], index: int,
                    count: int, address: str) -> list[str]:
  """The command line of process `index` of `count`."""
  return [sys.executable, "-m", module, *train_args,
          f"{DISTRIBUTED_PREFIX}initialize=yes",
          f"{DISTRIBUTED_PREFIX}coordinator_address={address}",
          f"{DISTRIBUTED_PREFIX}num_processes={count}",
          f"{DISTRIBUTED_PREFIX}process_id={index}"]


def process_env(devices: int, base: dict[str, str] | None = None
                ) -> dict[str, str]:
  """`base` (default os.environ) on CPU with `devices` devices per process;
  other XLA_FLAGS are kept."""
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith(DEVICE_COUNT_FLAG)]
  env["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_COUNT_FLAG}={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _die_with_parent():
  """A Popen preexec_fn (Linux): the child gets SIGTERM when the launcher
  dies, even by SIGKILL, so no process outlives it. None elsewhere."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return None
  pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
  return lambda: prctl(pr_set_pdeathsig, sigterm)


def _describe(code: int) -> str:
  if code < 0:
    try:
      return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"was killed by signal {-code}"
  return f"exited with code {code}"


def _pump(prefix: str, stream, out, lock: threading.Lock) -> None:
  """Copies `stream` to `out` line by line, each line prefixed."""
  with stream:
    for line in stream:
      if not line.endswith("\n"):
        line += "\n"
      with lock:
        out.write(prefix + line)
        out.flush()


class ProcessGroup:
  """N child processes: their output, their failure and their shutdown.
  Each child leads its own process group, so a stop reaches its children
  too (e.g. data-loader workers)."""

  def __init__(self, commands: list[list[str]], env: dict[str, str],
               log_dir: str | None = None, grace: float = 10.0, out=None):
    self.commands = commands
    self.env = env
    self.log_dir = log_dir
    self.grace = grace
    self.out = out or sys.stdout
    self.procs: list[subprocess.Popen] = []
    self.pumps: list[threading.Thread] = []
    self.received: int | None = None   # A signal the launcher got.
    self.stop_time: float | None = None
    self.killed = False

  def log_path(self, index: int) -> str:
    return os.path.join(self.log_dir, f"process_{index}.log")

  def start(self) -> None:
    """Starts every process, then the threads that copy their output (the
    preexec_fn must not run while other threads exist)."""
    preexec = _die_with_parent()
    if self.log_dir:
      os.makedirs(self.log_dir, exist_ok=True)
    for i, cmd in enumerate(self.commands):
      if self.log_dir:
        with open(self.log_path(i), "w") as log:
          proc = subprocess.Popen(
              cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
              stderr=subprocess.STDOUT, start_new_session=True,
              preexec_fn=preexec)
      else:
        proc = subprocess.Popen(
            cmd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=preexec, text=True,
            encoding="utf-8", errors="replace")
      self.procs.append(proc)
    if not self.log_dir:
      lock = threading.Lock()
      for i, proc in enumerate(self.procs):
        t = threading.Thread(target=_pump, daemon=True,
                             args=(f"[{i}] ", proc.stdout, self.out, lock))
        t.start()
        self.pumps.append(t)

  def signal_running(self, signum: int) -> None:
    """Sends `signum` to the process group of every running child."""
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, signum)
        except (ProcessLookupError, PermissionError):
          pass

  def stop(self) -> None:
    """SIGTERM to every running child; `wait` sends SIGKILL after grace."""
    if self.stop_time is None:
      self.stop_time = time.monotonic()
      self.signal_running(signal.SIGTERM)

  def _on_signal(self, signum, frame) -> None:
    del frame
    if self.stop_time is not None:  # A second signal: no more grace.
      self.signal_running(signal.SIGKILL)
      self.killed = True
      return
    self.received = signum
    _error(f"got {signal.Signals(signum).name}; forwarding it to the "
           "processes")
    self.stop_time = time.monotonic()
    self.signal_running(signum)

  def wait(self) -> int:
    """Waits for every process; returns the launcher's exit code."""
    count = len(self.procs)
    failed = None
    while True:
      codes = [proc.poll() for proc in self.procs]
      if self.stop_time is None:  # Not stopping yet: look for a failure.
        failed = next(((i, c) for i, c in enumerate(codes) if c), None)
        if failed is not None:
          _error(f"process {failed[0]} of {count} {_describe(failed[1])}; "
                 "stopping the other processes")
          self.stop()
      if all(c is not None for c in codes):
        break
      if (self.stop_time is not None and not self.killed
          and time.monotonic() - self.stop_time > self.grace):
        _error(f"processes still running {self.grace:g} s after the stop "
               "signal; sending SIGKILL")
        self.signal_running(signal.SIGKILL)
        self.killed = True
      time.sleep(POLL_SECONDS)
    for t in self.pumps:
      t.join()
    if self.received is not None:
      return 128 + self.received
    if failed is not None:
      index, code = failed
      if self.log_dir:
        self._print_log_tail(index)
      _error(f"error: process {index} of {count} {_describe(code)}")
      return code if code > 0 else 128 - code
    return 0

  def _print_log_tail(self, index: int) -> None:
    path = self.log_path(index)
    with open(path, errors="replace") as f:
      tail = f.readlines()[-LOG_TAIL_LINES:]
    _error(f"last lines of {path}:")
    sys.stderr.write("".join(f"[{index}] {line}" for line in tail))

  def run(self) -> int:
    """Starts, waits (forwarding SIGINT/SIGTERM) and returns the exit code."""
    handlers = {s: signal.signal(s, self._on_signal)
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      try:
        self.start()
      except OSError as e:
        _error(f"error: could not start process {len(self.procs)}: {e}")
        self.stop()
        self.wait()
        return 1
      return self.wait()
    finally:
      for s, handler in handlers.items():
        signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
  args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
  address = f"127.0.0.1:{args.port or free_port()}"
  n = args.num_processes
  commands = [process_command(args.module, train_args, i, n, address)
              for i in range(n)]
  env = process_env(args.devices_per_process)
  if args.dry_run:
    for i, cmd in enumerate(commands):
      print(f"[{i}] JAX_PLATFORMS=cpu XLA_FLAGS={shlex.quote(env['XLA_FLAGS'])}"
            f" {shlex.join(cmd)}")
    return 0
  _error(f"{n} processes x {args.devices_per_process} CPU device(s), "
         f"coordinator {address}")
  group = ProcessGroup(commands, env, args.log_dir, args.grace)
  code = group.run()
  if code == 0:
    _error(f"all {n} processes finished")
  return code


if __name__ == "__main__":
  sys.exit(main())
