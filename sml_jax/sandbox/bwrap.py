"""The bubblewrap command line that runs one python program in an empty, read-only world.

What the program sees (everything else of the host is absent, not merely unreadable):

    /usr/lib, /usr/lib64, /lib*   read-only: the C libraries the interpreter links
    <python>, its stdlib, LIBDIR  read-only: the interpreter binary, its standard library and
                                  libpython; site-packages dirs are covered by an empty tmpfs
                                  (no third-party packages, no .pth hooks)
    /usr/bin/prlimit, setpriv     read-only: the two launchers below (no shell, no other binaries)
    /sandbox                      read-only: the program's private directory (the cwd)
    /tmp                          tmpfs with a size cap: the only writable place
    /proc, /dev                   a procfs of its own pid namespace, a minimal /dev

Own ipc / pid / net / uts / cgroup namespaces: no network (only a downed loopback), no other
processes, a fresh hostname. The environment is cleared. The launch chain inside is

    prlimit --cpu --as --nproc --fsize --nofile -- [setpriv --reuid=U ...] python -E -s -B -u FILE

(-E -s: no environment or user-site influence; -u: output printed before a kill is kept.)

As root, `--unshare-all` would add a user namespace mapping the sandbox's root onto the host's
root, and the kernel never applies RLIMIT_NPROC to the host root (fork bombs would go unchecked).
So as root we unshare every namespace except the user one and `setpriv` drops to a random
unprivileged uid (no capabilities, no_new_privs) that no other process uses, so the process limit
counts only this run. As a normal user `--unshare-all` makes a user namespace; rlimits are then
counted per namespace and no privilege drop is needed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import site
import sys
import sysconfig

SANDBOX_DIR = "/sandbox"
_LAUNCHERS = ("prlimit", "setpriv")
_NAMESPACES_AS_ROOT = ("--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                       "--unshare-cgroup-try")
_UID_RANGE = (1 << 30, 1 << 31)  # far above any real account's uid


@dataclasses.dataclass(frozen=True)
class Limits:
  """Per-run resource limits (the wall-clock timeout is separate; CPU time follows from it)."""
  memory_bytes: int = 1 << 30     # RLIMIT_AS: address space of each process
  processes: int = 32             # RLIMIT_NPROC: tasks (processes and threads) of the sandbox user
  file_bytes: int = 16 << 20      # RLIMIT_FSIZE: the largest file it may write
  open_files: int = 256           # RLIMIT_NOFILE
  tmp_bytes: int = 64 << 20       # size of the /tmp tmpfs (bounds the RAM a disk-filler can take)
  output_bytes: int = 64 << 10    # kept per stream (stdout, stderr); the rest is read and dropped

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if not isinstance(getattr(self, f.name), int) or getattr(self, f.name) <= 0:
        raise ValueError(f"Limits.{f.name} must be a positive int, got {getattr(self, f.name)!r}.")


def cpu_seconds(timeout: float) -> int:
  """CPU-time limit for a wall-clock `timeout`: a second more, so a busy single-threaded loop hits
  the wall clock first; a multi-threaded one may hit this first (then SIGXCPU)."""
  return int(math.ceil(timeout)) + 1


def interpreter() -> tuple[str, str]:
  """(real path of the python running us, its installation prefix). In a venv this is the base
  interpreter: the sandbox must not see the project's site-packages."""
  exe = os.path.realpath(sys.executable)
  return exe, os.path.realpath(sys.base_prefix)


def missing_tools() -> list[str]:
  """Host binaries the sandbox needs that are not installed."""
  return [t for t in ("bwrap",) + _LAUNCHERS if shutil.which(t) is None]


def prlimit_args(limits: Limits, timeout: float, prlimit: str = "/usr/bin/prlimit") -> list[str]:
  cpu = cpu_seconds(timeout)
  return [prlimit, f"--cpu={cpu}:{cpu + 1}",
          f"--as={limits.memory_bytes}", f"--nproc={limits.processes}",
          f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", "--"]


def _base_paths(prefix: str) -> dict[str, str]:
  return sysconfig.get_paths(vars={"base": prefix, "platbase": prefix, "installed_base": prefix,
                                   "installed_platbase": prefix})


def _ro_binds(exe: str, prefix: str) -> dict[str, str]:
  """Read-only binds, destination -> source (same path inside and out): the C libraries, the
  interpreter file, its stdlib and its LIBDIR (libpython) -- not its whole prefix, which for a
  system python is /usr with every binary in /usr/bin."""
  binds = {}
  for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32"):
    if os.path.isdir(d) and not os.path.islink(d):  # merged-/usr: /lib* are symlinks (see command)
      binds[d] = d
  binds[exe] = exe
  paths = _base_paths(prefix)
  for d in {paths["stdlib"], paths["platstdlib"], sysconfig.get_config_var("LIBDIR") or ""}:
    if d and os.path.isdir(d):
      binds[os.path.realpath(d)] = os.path.realpath(d)
  for tool in _LAUNCHERS:
    binds[f"/usr/bin/{tool}"] = os.path.realpath(shutil.which(tool) or f"/usr/bin/{tool}")
  return binds


def _hidden_dirs(prefix: str, bound: list[str]) -> list[str]:
  """The interpreter's own site-packages that the binds expose: replaced by empty tmpfs."""
  paths = _base_paths(prefix)
  candidates = {paths["purelib"], paths["platlib"], *site.getsitepackages([prefix])}
  return sorted({os.path.realpath(d) for d in candidates if os.path.isdir(d)
                 and any(os.path.realpath(d).startswith(b + "/") for b in bound)})


def _parents(path: str) -> list[str]:
  """'/a/b/c' -> ['/a', '/a/b']."""
  parts = path.strip("/").split("/")[:-1]
  return ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]


def command(program_dir: str, filename: str, timeout: float, limits: Limits,
            uid: int | None = None) -> list[str]:
  """argv running `python FILE` from host dir `program_dir` (mounted at /sandbox) in bubblewrap.

  `uid` (root only): the unprivileged uid to run as; random when None.
  """
  exe, prefix = interpreter()
  as_root = os.geteuid() == 0
  argv = [shutil.which("bwrap") or "bwrap"]
  argv += list(_NAMESPACES_AS_ROOT) if as_root else ["--unshare-all"]
  argv += ["--die-with-parent", "--new-session", "--clearenv",
           "--setenv", "HOME", "/tmp", "--setenv", "PATH", "/usr/bin", "--setenv", "LANG", "C.UTF-8"]
  binds = _ro_binds(exe, prefix)
  binds[SANDBOX_DIR] = program_dir
  bound, dirs = [], set()
  # Parents first; directories bwrap creates for mount points would otherwise be 0700, which the
  # unprivileged uid cannot traverse.
  for dest in sorted(binds):
    if any(dest == b or dest.startswith(b + "/") for b in bound):
      continue  # already visible through an earlier bind (e.g. a prefix under /usr)
    for parent in _parents(dest):
      if parent not in dirs and not any(parent.startswith(b + "/") for b in bound):
        argv += ["--perms", "0755", "--dir", parent]
        dirs.add(parent)
    argv += ["--ro-bind", binds[dest], dest]
    bound.append(dest)
  for hidden in _hidden_dirs(prefix, bound):
    argv += ["--size", str(1 << 16), "--tmpfs", hidden, "--remount-ro", hidden]
  for link in ("/lib", "/lib64", "/lib32"):
    if os.path.islink(link):
      argv += ["--symlink", os.readlink(link), link]
  argv += ["--proc", "/proc", "--dev", "/dev",
           "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
           "--chdir", SANDBOX_DIR, "--"]
  argv += prlimit_args(limits, timeout)
  if as_root:
    uid = random.SystemRandom().randrange(*_UID_RANGE) if uid is None else uid
    argv += ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}",
             "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
  argv += [exe, "-E", "-s", "-B", "-u", "-X", "utf8", f"{SANDBOX_DIR}/{filename}"]
  return argv
