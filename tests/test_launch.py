"""launch/tpu.py: --dry_run output, flag validation, and the real execution path against a fake
`gcloud` executable that records its arguments (the real gcloud is never called)."""

import os
import shlex
import socket
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "tpu.py")
BASE = ["--tpu_type=v5p-64", "--zone=us-east5-a", "--project=my-proj",
        "--config=configs/sml_math_rl.py", "--workdir=gs://bucket/runs/rl"]


def launch(*args, check=True):
  proc = subprocess.run([sys.executable, LAUNCH, *args], capture_output=True, text=True,
                        timeout=60, cwd="/")
  if check and proc.returncode:
    raise AssertionError(f"launch/tpu.py failed ({proc.returncode}):\n{proc.stderr}")
  return proc


def commands(stdout: str) -> list[list[str]]:
  """The printed commands (comment lines dropped), split back into argv lists."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def ssh_command(argv: list[str]) -> str:
  [cmd] = [a for a in argv if a.startswith("--command=")]
  return cmd[len("--command="):]


def test_dry_run_prints_every_step():
  out = launch(*BASE, "--name=sml-test", "--dry_run", "--", "--config.model=gemma3_12b",
               "--config.checkpoint=gs://ckpts/gemma 12b").stdout
  cmds = commands(out)
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  assert all(c[1:4] == ["compute", "tpus", "tpu-vm"] for c in gcloud)
  assert all("--zone=us-east5-a" in c and "--project=my-proj" in c for c in gcloud)
  verbs = [c[4] for c in gcloud]
  assert verbs[:3] == ["describe", "create", "start"]
  assert verbs[3:] == ["scp", "ssh", "ssh", "ssh", "ssh"]  # copy, unpack, setup, run, tail hint

  create = gcloud[1]
  assert "sml-test" in create and "--accelerator-type=v5p-64" in create
  assert "--version=v2-alpha-tpuv5" in create
  # The pack step tars this checkout; scp sends it to every worker.
  assert cmds[3][:2] == ["bash", "-c"] and "git -C" in cmds[3][2] and "tar" in cmds[3][2]
  assert "--worker=all" in gcloud[3] and gcloud[3][5].endswith(".tgz")

  unpack, setup, run, tail = gcloud[4:]
  for c in (unpack, setup, run):
    assert "--worker=all" in c
  assert "tar -xzf sml_jax.tgz" in ssh_command(unpack)
  setup_cmd = shlex.split(ssh_command(setup))
  assert setup_cmd[:2] == ["bash", "sml_jax/launch/setup_worker.sh"]
  assert setup_cmd[3].startswith("libtpu==")
  run_cmd = ssh_command(run)
  assert "SML_JAX_DISTRIBUTED=auto" in run_cmd and "launch/run_worker.sh sml-test" in run_cmd
  program = shlex.split(run_cmd.split(" -- ", 1)[1])
  assert program == ["python", "-m", "sml_jax.main", "--config=configs/sml_math_rl.py",
                     "--workdir=gs://bucket/runs/rl", "--config.model=gemma3_12b",
                     "--config.checkpoint=gs://ckpts/gemma 12b"]
  assert "--worker=0" in tail and "tail -f" in ssh_command(tail)


def test_dry_run_git_ref_data_dir_and_v5e_names(tmp_path):
  (tmp_path / "gsm8k").mkdir()
  out = launch("--tpu_type=v5e-16", "--zone=z", "--config=configs/sml_math_rl.py",
               "--workdir=gs://b/r", "--git_ref=v1.2", "--git_url=https://example.com/sml.git",
               f"--data_dir={tmp_path}", "--spot", "--dry_run").stdout
  cmds = commands(out)
  create = next(c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"])
  assert "sml-v5e-16" in create and "--accelerator-type=v5litepod-16" in create
  assert "--version=v2-alpha-tpuv5-lite" in create and "--spot" in create
  assert not any("--project" in a for c in cmds for a in c)
  clone = ssh_command(cmds[3])
  assert "git clone --quiet https://example.com/sml.git sml_jax" in clone
  assert "checkout --quiet v1.2" in clone
  assert not any(c[:2] == ["bash", "-c"] for c in cmds)  # no local tarball of the checkout
  assert ["tar", "-C", str(tmp_path), "-czf"] == cmds[4][:4]
  assert "SML_JAX_DATA=$HOME/sml_jax_data" in ssh_command(cmds[-2])


@pytest.mark.parametrize("args, message", [
    (["--tpu_type=v5p-63"], "v5p slices come in sizes"),
    (["--tpu_type=v9-8"], "Unknown TPU type"),
    (["--config=configs/nope.py"], "no such file"),
    (["--workdir=/tmp/local"], "needs a shared workdir"),
    (["--name=Bad_Name"], "TPU VM names"),
    (["--", "--steps=3"], "only --config.<field>=<value>"),
])
def test_bad_flags_fail_clearly(args, message):
  flags = {a.split("=")[0]: a for a in BASE}
  tail = args[args.index("--"):] if "--" in args else []
  for a in args[:len(args) - len(tail)]:
    flags[a.split("=")[0]] = a
  proc = launch(*flags.values(), "--dry_run", *tail, check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert proc.stdout == ""


FAKE_GCLOUD = textwrap.dedent("""\
    #!/usr/bin/env bash
    # Records its argv (one call per line) and answers `describe` with $FAKE_TPU_STATE.
    printf '%q ' "$@" >> "$FAKE_GCLOUD_LOG"; echo >> "$FAKE_GCLOUD_LOG"
    if [ "$4" = describe ]; then
      if [ "$FAKE_TPU_STATE" = AUTH ]; then
        echo "ERROR: (gcloud) You do not currently have an active account" >&2; exit 1
      fi
      if [ -z "$FAKE_TPU_STATE" ]; then
        echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource not found" >&2
        exit 1
      fi
      echo "$FAKE_TPU_STATE"
    fi
    """)


def _run_with_fake_gcloud(tmp_path, state: str, dry_run: bool = False):
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  log = tmp_path / "calls.txt"
  log.write_text("")
  name = f"sml-pytest-{os.getpid()}-{state.lower() or 'new'}"
  env = dict(os.environ, FAKE_GCLOUD_LOG=str(log), FAKE_TPU_STATE=state)
  args = BASE + [f"--name={name}", f"--gcloud={gcloud}"] + (["--dry_run"] if dry_run else [])
  proc = subprocess.run([sys.executable, LAUNCH, *args], capture_output=True, text=True,
                        timeout=120, env=env, cwd="/")
  calls = [shlex.split(line) for line in log.read_text().splitlines()]
  return proc, [c[3] for c in calls], f"/tmp/{name}-sml_jax.tgz"


def test_execute_creates_when_missing_and_ships_the_checkout(tmp_path):
  proc, verbs, tarball = _run_with_fake_gcloud(tmp_path, state="")
  try:
    assert proc.returncode == 0, proc.stderr
    assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh"]
    with tarfile.open(tarball) as tar:
      names = set(tar.getnames())
    assert {"sml_jax/main.py", "launch/setup_worker.sh", "launch/run_worker.sh",
            "requirements/lock.txt", "configs/sml_math_rl.py"} <= names
    assert not any(n.startswith((".venv/", ".git/")) for n in names)
  finally:
    if os.path.exists(tarball):
      os.remove(tarball)


@pytest.mark.parametrize("state, expected", [("READY", ["describe", "scp", "ssh", "ssh", "ssh"]),
                                             ("STOPPED", ["describe", "start", "scp", "ssh", "ssh",
                                                          "ssh"])])
def test_execute_reuses_existing_vm(tmp_path, state, expected):
  proc, verbs, tarball = _run_with_fake_gcloud(tmp_path, state=state)
  if os.path.exists(tarball):
    os.remove(tarball)
  assert proc.returncode == 0, proc.stderr
  assert verbs == expected


def test_execute_refuses_a_preempted_vm_and_dry_run_calls_nothing(tmp_path):
  proc, verbs, _ = _run_with_fake_gcloud(tmp_path, state="PREEMPTED")
  assert proc.returncode == 1 and "PREEMPTED" in proc.stderr and verbs == ["describe"]
  proc, verbs, _ = _run_with_fake_gcloud(tmp_path, state="AUTH")  # not "missing": no create
  assert proc.returncode == 1 and "active account" in proc.stderr and verbs == ["describe"]
  proc, verbs, _ = _run_with_fake_gcloud(tmp_path, state="", dry_run=True)
  assert proc.returncode == 0 and verbs == []


def test_run_worker_script_runs_detached_and_copies_the_log(tmp_path):
  """launch/run_worker.sh for real (tmux or nohup): the program's output lands in the log, which
  is copied to <workdir>/logs/<host>.log when it ends."""
  name = f"sml-pytest-{os.getpid()}"
  env = dict(os.environ, HOME=str(tmp_path), SML_JAX_DISTRIBUTED="auto")
  workdir = tmp_path / "wd"
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "run_worker.sh"), name, str(workdir),
                         os.path.dirname(os.path.dirname(sys.executable)), "--", "python", "-c",
                         "import os; print('worker says', os.environ['SML_JAX_DISTRIBUTED'])"],
                        capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  copied = workdir / "logs" / f"{socket.gethostname()}.log"
  text = ""
  for _ in range(150):
    text = copied.read_text() if copied.exists() else ""
    if "exit status" in text:
      break
    time.sleep(0.2)
  assert "worker says auto" in text and "exit status 0" in text, text
