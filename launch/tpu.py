r"""Launches an experiment on a Cloud TPU VM slice (XManager style: one command from your laptop).

    python launch/tpu.py --tpu_type=v5p-64 --zone=us-east5-a --project=my-proj \
        --config=configs/sml_math_rl.py --workdir=gs://my-bucket/runs/rl_12b \
        -- --config.model=gemma3_12b --config.checkpoint=gs://.../gemma3-12b-it

Steps, each one `gcloud` (or local tar) command, printed before it runs:
  1. reuse the TPU VM `--name` if `tpu-vm describe` finds it READY (start it if STOPPED), else
     `tpu-vm create` it (--accelerator-type from --tpu_type, --version from the TPU generation);
     with --queued_resource, `queued-resources create` it and wait until it is ACTIVE;
  2. ship the code to every worker: a tarball of this checkout (tracked + untracked, not ignored
     files) copied with `tpu-vm scp --worker=all`, or with --git_ref a `git clone` on each worker;
     optionally --data_dir the same way (the run sees it as $SML_JAX_DATA);
  3. install the locked environment on every worker (`launch/setup_worker.sh`: Python 3.12 venv,
     `pip install --no-deps -r requirements/lock.txt` + the libtpu of requirements/tpu.txt, the
     one the locked jax's [tpu] extra pins);
  4. start `python -m sml_jax.main --config=... --workdir=... <overrides>` on all workers at once
     (`tpu-vm ssh --worker=all`), detached in tmux (nohup if tmux is missing) through
     `launch/run_worker.sh`, which logs to ~/sml_jax_logs/<name>.log and copies the log to
     <workdir>/logs/<host>.log when the run ends. On multi-host slices every worker is one JAX
     process (`sml_jax.parallel.distributed.maybe_initialize`, SML_JAX_DISTRIBUTED=auto).

  5. with --spot or --queued_resource (unless --detach), stay: every --poll_seconds check whether
     the run finished (<workdir>/report.md exists) and whether the slice was preempted; if so,
     delete it, create it again, and redo 2-4: the run resumes from the gs:// workdir.

--dry_run prints every command and runs none. Import-light: no jax (runs wherever gcloud does).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
import capacity
from capacity import Capacity, Step
from sml_jax.parallel import topology as topology_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

REMOTE_CODE = "sml_jax"            # on each worker, relative to $HOME (replaced on every launch)
REMOTE_VENV = "sml_jax_venv"       # kept across launches (reinstalled when the lock changes)
REMOTE_DATA = "sml_jax_data"


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str
  topology: topology_lib.Topology
  zone: str
  project: str | None
  config: str                      # path relative to the repo
  workdir: str
  overrides: tuple[str, ...]
  git_ref: str | None
  git_url: str | None
  data_dir: str | None
  libtpu: str
  runtime_version: str
  spot: bool
  gcloud: str
  tarball: str
  queued: bool = False             # a queued resource instead of `tpu-vm create`
  supervise: bool = False          # stay, recreate the slice after a preemption, rerun
  poll_seconds: float = 60.0
  max_restarts: int = 20

  @property
  def capacity(self) -> Capacity:
    return Capacity(kind="queued" if self.queued else "tpu_vm", gcloud=self.gcloud,
                    name=self.name, zone=self.zone, project=self.project,
                    accelerator_type=self.topology.accelerator_type,
                    runtime_version=self.runtime_version, spot=self.spot)


TPU_REQUIREMENTS = os.path.join(REPO, "requirements", "tpu.txt")
LOCK = os.path.join(REPO, "requirements", "lock.txt")


def _lock_pin(package: str, lock: str = LOCK) -> str | None:
  with open(lock, encoding="utf-8") as f:
    for line in f:
      if line.strip().lower().startswith(f"{package}=="):
        return line.strip().split("==", 1)[1]
  return None


def default_libtpu(tpu_requirements: str = TPU_REQUIREMENTS, lock: str = LOCK) -> str:
  """The libtpu requirement of requirements/tpu.txt (e.g. 'libtpu==0.0.50.*'), checked against the
  jax that requirements/lock.txt pins (not the jax of the machine that launches)."""
  with open(tpu_requirements, encoding="utf-8") as f:
    lines = [l.strip() for l in f if l.strip()]
  noted = [l.split("==", 1)[1] for l in lines if l.replace(" ", "").startswith("#jax==")]
  reqs = [l for l in lines if l.startswith("libtpu")]
  locked = _lock_pin("jax", lock)
  if len(reqs) != 1 or len(noted) != 1:
    raise ValueError(f"{tpu_requirements}: expected one '# jax==X' line and one libtpu line.")
  if noted[0] != locked:
    raise ValueError(f"{tpu_requirements} is for jax=={noted[0]} but {lock} pins jax=={locked}: "
                     "write the libtpu that jax's [tpu] extra requires there (or pass --libtpu).")
  return reqs[0].replace(" ", "")


def _gcloud(spec: Spec, *args: str) -> tuple[str, ...]:
  """`gcloud compute tpus tpu-vm <args> --zone=Z [--project=P]`."""
  return spec.capacity.tpu_vm(*args)


def _ssh_all(spec: Spec, command: str) -> tuple[str, ...]:
  return _gcloud(spec, "ssh", spec.name, "--worker=all", f"--command={command}")


def describe_step(spec: Spec) -> Step:
  return spec.capacity.describe()


def create_step(spec: Spec) -> Step:
  step = spec.capacity.create()
  kind = "queued resource" if spec.queued else "TPU VM"
  return dataclasses.replace(step, what=f"{step.what} ({kind}: {spec.topology.chips} chips, "
                                        f"{spec.topology.hosts} hosts)")


def start_step(spec: Spec) -> Step | None:
  return spec.capacity.start()


def code_steps(spec: Spec) -> list[Step]:
  """Ships the code (and the optional data dir) to $HOME on every worker."""
  if spec.git_ref:
    clone = (f"rm -rf {REMOTE_CODE} && git clone --quiet {shlex.quote(spec.git_url)} {REMOTE_CODE}"
             f" && git -C {REMOTE_CODE} checkout --quiet {shlex.quote(spec.git_ref)}")
    steps = [Step(f"clone {spec.git_url} at {spec.git_ref} on every worker", _ssh_all(spec, clone))]
  else:
    pack = (f"git -C {shlex.quote(REPO)} ls-files -z --cached --others --exclude-standard"
            f" | tar -C {shlex.quote(REPO)} --ignore-failed-read --null -T - -czf "
            f"{shlex.quote(spec.tarball)}")  # ignore-failed-read: tracked files deleted locally
    unpack = (f"rm -rf {REMOTE_CODE} && mkdir -p {REMOTE_CODE}"
              f" && tar -xzf {REMOTE_CODE}.tgz -C {REMOTE_CODE}")
    steps = [
        Step("pack this checkout (tracked + untracked, not ignored files)", ("bash", "-c", pack)),
        Step("copy it to every worker", _gcloud(spec, "scp", spec.tarball,
                                                f"{spec.name}:{REMOTE_CODE}.tgz", "--worker=all")),
        Step("unpack it on every worker", _ssh_all(spec, unpack)),
    ]
  if spec.data_dir:
    data_tar = spec.tarball.replace(".tgz", "-data.tgz")
    steps += [
        Step("pack the data dir", ("tar", "-C", spec.data_dir, "-czf", data_tar, ".")),
        Step("copy it to every worker", _gcloud(spec, "scp", data_tar,
                                                f"{spec.name}:{REMOTE_DATA}.tgz", "--worker=all")),
        Step("unpack it on every worker", _ssh_all(
            spec, f"mkdir -p {REMOTE_DATA} && tar -xzf {REMOTE_DATA}.tgz -C {REMOTE_DATA}")),
    ]
  return steps


def setup_step(spec: Spec) -> Step:
  cmd = (f"bash {REMOTE_CODE}/launch/setup_worker.sh $HOME/{REMOTE_VENV} "
         f"{shlex.quote(spec.libtpu)}")
  return Step("install the locked environment on every worker", _ssh_all(spec, cmd))


def train_command(spec: Spec) -> list[str]:
  """The program every worker runs (relative to the code dir)."""
  return ["python", "-m", "sml_jax.main", f"--config={spec.config}",
          f"--workdir={spec.workdir}", *spec.overrides]


def run_step(spec: Spec) -> Step:
  env = ["SML_JAX_DISTRIBUTED=auto"]
  if spec.data_dir:
    env.append(f"SML_JAX_DATA=$HOME/{REMOTE_DATA}")
  cmd = (f"cd {REMOTE_CODE} && {' '.join(env)} bash launch/run_worker.sh {shlex.quote(spec.name)}"
         f" {shlex.quote(spec.workdir)} $HOME/{REMOTE_VENV} -- {shlex.join(train_command(spec))}")
  return Step(f"start sml_jax.main on all {spec.topology.hosts} workers (detached)",
              _ssh_all(spec, cmd))


def deploy_steps(spec: Spec) -> list[Step]:
  """On a ready slice: ship the code, install, start the run (it resumes from the workdir)."""
  return code_steps(spec) + [setup_step(spec), run_step(spec)]


def done_step(spec: Spec) -> Step:
  """Succeeds once the run has finished: process 0 writes the report last."""
  return Step("has the run finished? (its report is written last)",
              (spec.gcloud, "storage", "ls", f"{spec.workdir}/report.md"))


def plan_steps(spec: Spec) -> list[Step]:
  """Every command, in order (describe / create / start are chosen at run time)."""
  start = start_step(spec)
  return ([describe_step(spec), create_step(spec)] + ([start] if start else [])
          + deploy_steps(spec))


def supervise_steps(spec: Spec) -> list[Step]:
  """What --spot / --queued_resource supervision runs every `poll_seconds` until the run ends."""
  cap = spec.capacity
  lost = "/".join(cap.lost_states)
  return ([done_step(spec), describe_step(spec),
           cap.delete(when=f"if describe says {lost}: the slice was preempted"),
           cap.create(when="then again")]
          + [dataclasses.replace(s, when="once the new slice is ready: the run resumes from "
                                 "the workdir") for s in deploy_steps(spec)])


def watch_hint(spec: Spec) -> str:
  tail = shlex.join(_gcloud(spec, "ssh", spec.name, "--worker=0",
                            f"--command=tail -f ~/sml_jax_logs/{spec.name}.log"))
  return f"# follow worker 0:\n{tail}\n# logs are copied to {spec.workdir}/logs/ when the run ends"


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """Flags before `--`; everything after it goes to sml_jax.main as extra overrides."""
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  else:
    extra = []
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tpu_type", required=True, help="e.g. v5p-64, v5e-16, v6e-8, v4-32")
  p.add_argument("--zone", required=True)
  p.add_argument("--config", required=True, help="experiment config, relative to the repo")
  p.add_argument("--workdir", required=True, help="gs://bucket/path (shared by all workers)")
  p.add_argument("--name", default=None, help="TPU VM name (default: sml-<tpu_type>)")
  p.add_argument("--project", default=None)
  p.add_argument("--git_ref", default=None, help="clone this ref on the workers instead of "
                 "copying this checkout")
  p.add_argument("--git_url", default=None, help="repo to clone (default: origin's URL)")
  p.add_argument("--data_dir", default=None, help="local data dir to copy ($SML_JAX_DATA)")
  p.add_argument("--runtime_version", default=None, help="gcloud --version (default per "
                 "generation)")
  p.add_argument("--libtpu", default=None, help="libtpu requirement (default: the one the "
                 "installed jax pins)")
  p.add_argument("--spot", action="store_true", help="Spot capacity; the launcher stays and "
                 "recreates the slice after a preemption (the run resumes from --workdir)")
  p.add_argument("--queued_resource", action="store_true", help="get the slice through a "
                 "queued resource (queued-resources create), recreated after a preemption")
  p.add_argument("--detach", action="store_true", help="with --spot / --queued_resource: "
                 "return once the run started instead of supervising it")
  p.add_argument("--poll_seconds", type=float, default=60.0, help="supervision interval")
  p.add_argument("--max_restarts", type=int, default=20, help="give up after this many "
                 "recreations")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  p.add_argument("--gcloud", default="gcloud", help="gcloud executable")
  args = p.parse_args(argv)
  return args, extra


def _origin_url() -> str | None:
  try:
    out = subprocess.run(["git", "-C", REPO, "remote", "get-url", "origin"], capture_output=True,
                         text=True, check=True, timeout=10)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def make_spec(args: argparse.Namespace, extra: list[str]) -> Spec:
  """Validates the flags (ValueError with a clear message)."""
  topology = topology_lib.get_topology(args.tpu_type)
  if os.path.isabs(args.config) or not os.path.isfile(os.path.join(REPO, args.config)):
    raise ValueError(f"--config={args.config}: no such file in {REPO} (give a path relative to "
                     "the repo, e.g. configs/sml_math_rl.py).")
  if topology.hosts > 1 and not re.match(r"^[a-z][a-z0-9]*://", args.workdir):
    raise ValueError(f"--workdir={args.workdir}: a {topology.hosts}-host slice needs a shared "
                     "workdir such as gs://bucket/path (orbax writes one checkpoint from all "
                     "hosts).")
  bad = [e for e in extra if not e.startswith("--config.")]
  if bad:
    raise ValueError(f"After '--' only --config.<field>=<value> overrides are allowed, got {bad}.")
  name = args.name or f"sml-{topology.name}"
  if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
    raise ValueError(f"--name={name!r}: TPU VM names are lowercase letters, digits and '-'.")
  libtpu = args.libtpu or default_libtpu()
  if args.poll_seconds < 0 or args.max_restarts < 0:
    raise ValueError("--poll_seconds and --max_restarts must be >= 0.")
  git_url = args.git_url or (_origin_url() if args.git_ref else None)
  if args.git_ref and not git_url:
    raise ValueError("--git_ref needs --git_url (this checkout has no 'origin' remote).")
  if args.data_dir and not os.path.isdir(args.data_dir):
    raise ValueError(f"--data_dir={args.data_dir}: not a directory.")
  return Spec(name=name, topology=topology, zone=args.zone, project=args.project,
              config=args.config, workdir=args.workdir.rstrip("/"), overrides=tuple(extra),
              git_ref=args.git_ref, git_url=git_url,
              data_dir=os.path.abspath(args.data_dir) if args.data_dir else None, libtpu=libtpu,
              runtime_version=args.runtime_version or topology.runtime_version, spot=args.spot,
              gcloud=args.gcloud, tarball=f"/tmp/{name}-sml_jax.tgz",
              queued=args.queued_resource,
              supervise=(args.spot or args.queued_resource) and not args.detach,
              poll_seconds=args.poll_seconds, max_restarts=args.max_restarts)


_print, _run = capacity.print_step, capacity.run_step


def _finished(spec: Spec) -> bool:
  return subprocess.run(done_step(spec).argv, capture_output=True).returncode == 0


def execute(spec: Spec) -> None:
  """Provisions (describe decides between reuse, start and create; a queued resource is waited
  for), deploys, and with `supervise` recreates the slice after each preemption."""
  cap = spec.capacity
  capacity.provision(cap, recreate_lost=spec.supervise, poll_seconds=spec.poll_seconds)
  deploy = lambda: [_run(step) for step in deploy_steps(spec)]
  deploy()
  print(watch_hint(spec))
  if spec.supervise:
    print(f"# supervising {spec.name} every {spec.poll_seconds:g} s until "
          f"{spec.workdir}/report.md exists (Ctrl-C stops watching; the run goes on)", flush=True)
    capacity.supervise(cap, finished=lambda: _finished(spec), deploy=deploy,
                       poll_seconds=spec.poll_seconds, max_restarts=spec.max_restarts)


def main(argv: list[str]) -> int:
  args, extra = parse_args(argv)
  try:
    spec = make_spec(args, extra)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.dry_run:
    for step in plan_steps(spec):
      _print(step)
    print(watch_hint(spec))
    if spec.supervise:
      print(f"# --- then every {spec.poll_seconds:g} s until the run has finished ---")
      for step in supervise_steps(spec):
        _print(step)
    return 0
  try:
    execute(spec)
  except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
