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
               f"--data_dir={tmp_path}", "--spot", "--detach", "--dry_run").stdout
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
    # Records its argv (one call per line). `describe` prints the first line of $FAKE_STATES
    # (removed when more lines follow; an empty line: NOT_FOUND; AUTH: an auth error). Once one
    # line is left, create / start make the slice ready and delete makes it missing. `storage ls`
    # succeeds when the first line of $FAKE_DONE is "yes" (popped the same way).
    printf '%q ' "$@" >> "$FAKE_GCLOUD_LOG"; echo >> "$FAKE_GCLOUD_LOG"
    pop() { head -n1 "$1"; if [ "$(wc -l < "$1")" -gt 1 ]; then sed -i 1d "$1"; fi; }
    ready=READY; [ "$3" = queued-resources ] && ready=ACTIVE
    case "$1 $4" in
      "compute describe")
        state=$(pop "$FAKE_STATES")
        if [ "$state" = AUTH ]; then
          echo "ERROR: (gcloud) You do not currently have an active account" >&2; exit 1
        fi
        if [ -z "$state" ]; then
          echo "ERROR: (gcloud.compute.tpus.describe) NOT_FOUND: Resource not found" >&2; exit 1
        fi
        echo "$state" ;;
      "compute create"|"compute start")
        [ "$(wc -l < "$FAKE_STATES")" -gt 1 ] || echo "$ready" > "$FAKE_STATES" ;;
      "compute delete") [ "$(wc -l < "$FAKE_STATES")" -gt 1 ] || echo "" > "$FAKE_STATES" ;;
      "storage ") [ "$(pop "$FAKE_DONE")" = yes ] || { echo "ERROR: not found" >&2; exit 1; } ;;
    esac
    exit 0
    """)


def _run_with_fake_gcloud(tmp_path, state: str = "", dry_run: bool = False, states=None,
                          done=("yes",), extra=()):
  """Runs the launcher against FAKE_GCLOUD -> (process, the gcloud verbs called, tarball)."""
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  log = tmp_path / "calls.txt"
  log.write_text("")
  (tmp_path / "states").write_text("\n".join(states if states is not None else [state]) + "\n")
  (tmp_path / "done").write_text("\n".join(done) + "\n")
  name = f"sml-pytest-{os.getpid()}-{state.lower() or 'new'}"
  env = dict(os.environ, FAKE_GCLOUD_LOG=str(log), FAKE_STATES=str(tmp_path / "states"),
             FAKE_DONE=str(tmp_path / "done"))
  args = (BASE + [f"--name={name}", f"--gcloud={gcloud}", *extra]
          + (["--dry_run"] if dry_run else []))
  proc = subprocess.run([sys.executable, LAUNCH, *args], capture_output=True, text=True,
                        timeout=120, env=env, cwd="/")
  calls = [shlex.split(line) for line in log.read_text().splitlines()]
  verbs = [c[3] if c[0] == "compute" else f"{c[0]} {c[1]}" for c in calls]
  return proc, verbs, f"/tmp/{name}-sml_jax.tgz"


def test_execute_creates_when_missing_and_ships_the_checkout(tmp_path):
  proc, verbs, tarball = _run_with_fake_gcloud(tmp_path, state="")
  try:
    assert proc.returncode == 0, proc.stderr
    assert verbs == ["describe", "create", "describe", "scp", "ssh", "ssh", "ssh"]
    with tarfile.open(tarball) as tar:
      names = set(tar.getnames())
    assert {"sml_jax/main.py", "launch/setup_worker.sh", "launch/run_worker.sh",
            "requirements/lock.txt", "configs/sml_math_rl.py"} <= names
    assert not any(n.startswith((".venv/", ".git/")) for n in names)
  finally:
    if os.path.exists(tarball):
      os.remove(tarball)


@pytest.mark.parametrize("state, expected", [("READY", ["describe", "describe", "scp", "ssh", "ssh",
                                                        "ssh"]),
                                             ("STOPPED", ["describe", "start", "describe", "scp",
                                                          "ssh", "ssh", "ssh"])])
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


def test_dry_run_queued_resource_and_spot_show_the_recreate_path():
  out = launch(*BASE, "--name=sml-q", "--queued_resource", "--spot", "--poll_seconds=30",
               "--dry_run").stdout
  before, after = out.split("# --- then every 30 s until the run has finished ---")
  first, again = commands(before), commands(after)
  qr = ["gcloud", "compute", "tpus", "queued-resources"]
  assert first[0][:6] == qr + ["describe", "sml-q"]
  create = first[1]
  assert create[:6] == qr + ["create", "sml-q"]
  assert {"--node-id=sml-q", "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5",
          "--spot", "--zone=us-east5-a", "--project=my-proj"} <= set(create)
  assert not any(c[4] == "start" for c in first if c[:4] == qr)   # No stopped state to start.
  # ssh / scp go to the node the queued resource holds.
  assert [c[4] for c in first if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]] == \
      ["scp", "ssh", "ssh", "ssh", "ssh"]
  # Supervision: finished? else describe; after a preemption delete (--force: the node too),
  # create again, and redeploy (the run resumes from the gs:// workdir).
  assert again[0] == ["gcloud", "storage", "ls", "gs://bucket/runs/rl/report.md"]
  assert again[1][:5] == qr + ["describe"]
  assert again[2][:6] == qr + ["delete", "sml-q"] and "--force" in again[2]
  assert again[3] == create
  assert "SUSPENDED/FAILED" in after
  program = shlex.split(ssh_command(again[-1]).split(" -- ", 1)[1])
  assert "--workdir=gs://bucket/runs/rl" in program

  spot = commands(launch(*BASE, "--spot", "--dry_run").stdout)
  assert "--spot" in spot[1] and spot[1][4] == "create"
  assert ["gcloud", "compute", "tpus", "tpu-vm", "delete", "sml-v5p-64", "--quiet"] == spot[-7][:7]
  detached = launch(*BASE, "--spot", "--detach", "--dry_run").stdout
  assert "then every" not in detached and "storage" not in detached


@pytest.mark.parametrize("extra, states", [
    (["--spot"], ["", "READY", "PREEMPTED", "READY", "READY"]),
    (["--queued_resource"], ["", "WAITING_FOR_RESOURCES", "ACTIVE", "SUSPENDED", "ACCEPTED",
                             "ACTIVE", "ACTIVE"]),
])
def test_execute_recreates_a_preempted_slice_and_redeploys(tmp_path, extra, states):
  proc, verbs, tarball = _run_with_fake_gcloud(
      tmp_path, states=states, done=["no", "no", "yes"], extra=[*extra, "--poll_seconds=0"])
  if os.path.exists(tarball):
    os.remove(tarball)
  assert proc.returncode == 0, proc.stderr
  deploy = ["scp", "ssh", "ssh", "ssh"]
  waits = ["describe"] * (2 if "--queued_resource" in extra else 1)
  assert verbs == (["describe", "create", *waits, *deploy,
                    "storage ls", "describe", "delete", "create", *waits, *deploy,
                    "storage ls", "describe", "storage ls"]), verbs
  assert "recreating it (1/20)" in proc.stdout and "the run has finished" in proc.stdout


def test_libtpu_pin_comes_from_the_lock_not_this_machine(tmp_path):
  sys.path.insert(0, os.path.join(REPO, "launch"))
  import tpu  # pylint: disable=g-import-not-at-top
  req = tpu.default_libtpu()
  assert req.startswith("libtpu==")
  # requirements/tpu.txt must be what the locked jax's [tpu] extra requires (checked here when
  # this machine has that jax).
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  if importlib.metadata.version("jax") == tpu._lock_pin("jax"):  # pylint: disable=protected-access
    extra = [r.split(";")[0].replace(" ", "") for r in importlib.metadata.requires("jax")
             if r.startswith("libtpu") and "tpu" in r.split(";")[1]]
    assert extra == [req]
  stale = tmp_path / "tpu.txt"
  stale.write_text("# jax==0.0.1\nlibtpu==0.0.1\n")
  with pytest.raises(ValueError, match="is for jax==0.0.1 but"):
    tpu.default_libtpu(str(stale))
