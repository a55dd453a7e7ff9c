r"""Launches an experiment on a Cloud TPU VM slice (XManager style: one command from your laptop).

    python launch/tpu.py --tpu_type=v5p-64 --zone=us-east5-a --project=my-proj \
        --config=configs/sml_math_rl.py --workdir=gs://my-bucket/runs/rl_12b \
        -- --config.model=gemma3_12b --config.checkpoint=gs://.../gemma3-12b-it

Steps, each one `gcloud` (or local tar) command, printed before it runs:
  1. reuse the TPU VM `--name` if `tpu-vm describe` finds it READY (start it if STOPPED), else
     `tpu-vm create` it (--accelerator-type from --tpu_type, --version from the TPU generation);
  2. ship the code to every worker: a tarball of this checkout (tracked + untracked, not ignored
     files) copied with `tpu-vm scp --worker=all`, or with --git_ref a `git clone` on each worker;
     optionally --data_dir the same way (the run sees it as $SML_JAX_DATA);
  3. install the locked environment on every worker (`launch/setup_worker.sh`: Python 3.12 venv,
     `pip install --no-deps -r requirements/lock.txt` + the libtpu that jax's [tpu] extra pins);
  4. start `python -m sml_jax.main --config=... --workdir=... <overrides>` on all workers at once
     (`tpu-vm ssh --worker=all`), detached in tmux (nohup if tmux is missing) through
     `launch/run_worker.sh`, which logs to ~/sml_jax_logs/<name>.log and copies the log to
     <workdir>/logs/<host>.log when the run ends. On multi-host slices every worker is one JAX
     process (`sml_jax.parallel.distributed.maybe_initialize`, SML_JAX_DISTRIBUTED=auto).

--dry_run prints every command and runs none. Import-light: no jax (runs wherever gcloud does).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from sml_jax.parallel import topology as topology_lib

REMOTE_CODE = "sml_jax"            # on each worker, relative to $HOME (replaced on every launch)
REMOTE_VENV = "sml_jax_venv"       # kept across launches (reinstalled when the lock changes)
REMOTE_DATA = "sml_jax_data"


@dataclasses.dataclass(frozen=True)
class Step:
  what: str
  argv: tuple[str, ...]
  when: str = ""                   # a condition, for the printout ("if no TPU VM exists")

  def shell(self) -> str:
    return shlex.join(self.argv)


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


def default_libtpu() -> str | None:
  """The libtpu requirement jax's `tpu` extra pins (e.g. 'libtpu==0.0.50.*'), from the installed
  jax's metadata; None if jax is not installed here."""
  try:
    reqs = importlib.metadata.requires("jax") or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for r in reqs:
    spec, _, marker = r.partition(";")
    if spec.strip().startswith("libtpu") and "tpu" in marker:
      return spec.strip().replace(" ", "")
  return None


def _gcloud(spec: Spec, *args: str) -> tuple[str, ...]:
  """`gcloud compute tpus tpu-vm <args> --zone=Z [--project=P]`."""
  tail = (f"--zone={spec.zone}",) + ((f"--project={spec.project}",) if spec.project else ())
  return (spec.gcloud, "compute", "tpus", "tpu-vm") + args + tail


def _ssh_all(spec: Spec, command: str) -> tuple[str, ...]:
  return _gcloud(spec, "ssh", spec.name, "--worker=all", f"--command={command}")


def describe_step(spec: Spec) -> Step:
  return Step("look for an existing TPU VM", _gcloud(spec, "describe", spec.name,
                                                     "--format=value(state)"))


def create_step(spec: Spec) -> Step:
  args = ["create", spec.name, f"--accelerator-type={spec.topology.accelerator_type}",
          f"--version={spec.runtime_version}"]
  if spec.spot:
    args.append("--spot")
  return Step(f"create the TPU VM ({spec.topology.chips} chips, {spec.topology.hosts} hosts)",
              _gcloud(spec, *args), when="if describe finds no TPU VM of that name")


def start_step(spec: Spec) -> Step:
  return Step("start the stopped TPU VM", _gcloud(spec, "start", spec.name),
              when="if describe says STOPPED")


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


def plan_steps(spec: Spec) -> list[Step]:
  """Every command, in order (describe / create / start are chosen at run time)."""
  return ([describe_step(spec), create_step(spec), start_step(spec)] + code_steps(spec)
          + [setup_step(spec), run_step(spec)])


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
  p.add_argument("--spot", action="store_true", help="create a Spot TPU VM")
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
  if not libtpu:
    raise ValueError("Cannot tell which libtpu matches jax here (jax not installed?): pass "
                     "--libtpu='libtpu==X.Y.Z'.")
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
              gcloud=args.gcloud, tarball=f"/tmp/{name}-sml_jax.tgz")


def _print(step: Step) -> None:
  print(f"# {step.what}" + (f" ({step.when})" if step.when else ""))
  print(step.shell(), flush=True)


def _run(step: Step) -> subprocess.CompletedProcess:
  _print(step)
  return subprocess.run(step.argv, check=True)


def execute(spec: Spec) -> None:
  """Runs the steps; describe decides between reuse, start and create."""
  describe, create, start, *rest = plan_steps(spec)
  _print(describe)
  found = subprocess.run(describe.argv, capture_output=True, text=True)
  state = found.stdout.strip() if found.returncode == 0 else None
  if state is None and "not found" not in found.stderr.lower().replace("_", " "):
    raise RuntimeError(f"'{describe.shell()}' failed (not a missing VM: auth? project? zone?):\n"
                       f"{found.stderr.strip()}")
  if state is None:
    _run(create)
  elif state == "STOPPED":
    _run(start)
  elif state == "READY":
    print(f"# reusing {spec.name} (READY)")
  else:
    delete = shlex.join(_gcloud(spec, "delete", spec.name))
    raise RuntimeError(f"TPU VM {spec.name} is {state}; wait, or delete it ('{delete}') and "
                       "launch again.")
  for step in rest:
    _run(step)
  print(watch_hint(spec))


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
    return 0
  try:
    execute(spec)
  except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
