"""Run untrusted python programs: one bubblewrap process per program, many in parallel.

    result = run_program("print(1 + 1)", timeout=5.0)     # RunResult(exit_code=0, stdout="2\\n", ...)
    results = run_many(sources, timeout=5.0, workers=2)   # same order as `sources`

Each run gets a fresh private directory holding the program (plus optional extra files), a
wall-clock deadline after which the whole process group is SIGKILLed (the sandbox's pid namespace
dies with it), and capped output. Standard library only: verification starts this once per
candidate program, so it must not pay for jax / tensorflow imports.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Mapping, Sequence

from sml_jax.sandbox import bwrap

PROGRAM_NAME = "main.py"
_KILL_GRACE = 2.0  # seconds to collect output after the kill before giving up on the pipes
_INSTALL_HINT = ("Install it with `apt-get install bubblewrap util-linux`, or pass allow_unsafe=True "
                 "(CLI: --allow-unsafe) to run programs WITHOUT a sandbox (trusted code only).")


class SandboxUnavailable(RuntimeError):
  """bubblewrap (or prlimit / setpriv) is missing or cannot create a sandbox on this machine."""


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What one program did. `exit_code`: the program's exit status; 128 + N if a signal N killed it
  (e.g. 137 = SIGKILL, 152 = SIGXCPU, the CPU-time limit); -9 if the runner killed it at the
  wall-clock deadline. `timed_out`: the wall-clock or CPU-time limit ended it."""
  exit_code: int
  stdout: str
  stderr: str
  timed_out: bool
  duration: float = 0.0     # wall-clock seconds
  truncated: bool = False   # some output beyond Limits.output_bytes was dropped
  sandboxed: bool = True    # False only for the explicitly allowed unsafe runner

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _write_dir(root: str, source: str, files: Mapping[str, str] | None) -> str:
  """Private program dir under `root`, world-readable (the sandbox runs as another uid)."""
  prog_dir = os.path.join(root, "program")
  os.mkdir(prog_dir)
  os.chmod(prog_dir, 0o755)
  for name, text in {PROGRAM_NAME: source, **(files or {})}.items():
    if not name or os.path.basename(name) != name or name in (".", ".."):
      raise ValueError(f"Extra file names must be plain file names, got {name!r}.")
    path = os.path.join(prog_dir, name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    os.chmod(path, 0o644)
  return prog_dir


def _kill_group(proc: subprocess.Popen) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
  """Reads both pipes until EOF and the process exits, or the deadline passes (then kills the
  group). Keeps the first `cap` bytes per stream, drains the rest. Returns (out, err, truncated,
  killed). Never blocks past deadline + grace."""
  bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
  truncated = killed = False
  stop = deadline
  with selectors.DefaultSelector() as sel:
    for f in bufs:
      sel.register(f, selectors.EVENT_READ)
    while sel.get_map():
      now = time.monotonic()
      if now >= stop:
        if killed:
          break  # pipes held open past the grace: give up on them
        _kill_group(proc)
        killed, stop = True, now + _KILL_GRACE
      for key, _ in sel.select(max(0.0, stop - now)):
        chunk = os.read(key.fd, 1 << 16)
        if not chunk:
          sel.unregister(key.fileobj)
          continue
        buf = bufs[key.fileobj]
        room = cap - len(buf)
        buf += chunk[:max(room, 0)]
        truncated |= len(chunk) > room
  if not killed:
    try:
      proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # closed its output but kept running
      _kill_group(proc)
      killed = True
  try:
    proc.wait(timeout=_KILL_GRACE)
  except subprocess.TimeoutExpired:
    pass
  return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), truncated, killed


def _execute(argv: list[str], cwd: str, env: dict | None, stdin_path: str | None, timeout: float,
             cap: int, sandboxed: bool) -> RunResult:
  start = time.monotonic()
  stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
  try:
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
  finally:
    if stdin_path:
      stdin.close()
  try:
    out, err, truncated, killed = _collect(proc, start + timeout, cap)
  finally:
    _kill_group(proc)  # nothing may outlive the run (a no-op when all exited)
    proc.stdout.close()
    proc.stderr.close()
  code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
  if code < 0:  # the unsafe runner reports signals as negative codes: match bwrap's 128 + N
    code = -signal.SIGKILL if killed else 128 - code
  cpu_killed = code == 128 + signal.SIGXCPU
  return RunResult(exit_code=code, stdout=out.decode("utf-8", "replace"),
                   stderr=err.decode("utf-8", "replace"), timed_out=killed or cpu_killed,
                   duration=time.monotonic() - start, truncated=truncated, sandboxed=sandboxed)


def _check_sandbox() -> None:
  """bwrap, prlimit and setpriv are installed, and bwrap can build our sandbox here (once per
  process; e.g. user namespaces may be disabled for non-root users)."""
  missing = bwrap.missing_tools()
  if missing:
    raise SandboxUnavailable(f"The code sandbox needs {', '.join(missing)}, not found on PATH. "
                             + _INSTALL_HINT)
  _self_test()


@functools.cache
def _self_test() -> None:
  got = _run("print('ok')", 10.0, None, None, bwrap.Limits(), False)
  if got.exit_code != 0 or got.stdout != "ok\n":
    raise SandboxUnavailable(f"bubblewrap could not start the sandbox (exit {got.exit_code}): "
                             f"{got.stderr.strip()[-2000:]}")


def _run(source: str, timeout: float, files, stdin: str | bytes | None, limits: bwrap.Limits,
         allow_unsafe: bool) -> RunResult:
  with tempfile.TemporaryDirectory(prefix="sml_sandbox_") as root:
    prog_dir = _write_dir(root, source, files)
    stdin_path = None
    if stdin is not None:
      stdin_path = os.path.join(root, "stdin")
      with open(stdin_path, "wb") as f:
        f.write(stdin.encode("utf-8") if isinstance(stdin, str) else stdin)
    if allow_unsafe:
      exe, _ = bwrap.interpreter()
      prlimit = shutil.which("prlimit")
      argv = bwrap.prlimit_args(limits, timeout, prlimit) if prlimit else []
      argv += [exe, "-E", "-s", "-B", "-u", "-X", "utf8", PROGRAM_NAME]
      env = {"PATH": os.defpath, "HOME": prog_dir, "LANG": "C.UTF-8"}
      return _execute(argv, prog_dir, env, stdin_path, timeout, limits.output_bytes, False)
    argv = bwrap.command(prog_dir, PROGRAM_NAME, timeout, limits)
    return _execute(argv, "/", {}, stdin_path, timeout, limits.output_bytes, True)


def run_program(source: str, timeout: float = 5.0, *, files: Mapping[str, str] | None = None,
                stdin: str | bytes | None = None, limits: bwrap.Limits | None = None,
                allow_unsafe: bool = False) -> RunResult:
  """Runs python `source` as /sandbox/main.py in a fresh sandbox; never raises for what the
  program does, never waits much past `timeout` seconds (wall clock).

  files: extra files (name -> text) beside the program, read-only.
  stdin: bytes/text fed to the program's stdin (default: empty).
  allow_unsafe: without bubblewrap, run as a plain subprocess with the same limits where the
    host allows (prlimit), a cleared environment and the wall-clock kill, but NO isolation.
    Raises SandboxUnavailable when bubblewrap is missing and this is False.
  """
  if not isinstance(source, str):
    raise TypeError(f"source must be str, got {type(source).__name__}.")
  if not timeout > 0:
    raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}.")
  limits = limits or bwrap.Limits()
  unsafe = allow_unsafe and not sandbox_available()
  if not unsafe:
    _check_sandbox()
  return _run(source, float(timeout), files, stdin, limits, unsafe)


def run_many(sources: Sequence[str], timeout: float = 5.0, *, workers: int | None = None,
             stdins: Sequence[str | bytes | None] | None = None, **kwargs) -> list[RunResult]:
  """run_program over many sources in a thread pool (each run is its own sandbox process);
  results in input order. workers: parallel runs (default: the number of CPUs)."""
  if stdins is not None and len(stdins) != len(sources):
    raise ValueError(f"Got {len(stdins)} stdins for {len(sources)} sources.")
  stdins = stdins if stdins is not None else [None] * len(sources)
  if not sources:
    return []
  workers = workers or os.cpu_count() or 1
  if workers == 1 or len(sources) == 1:
    return [run_program(s, timeout, stdin=i, **kwargs) for s, i in zip(sources, stdins)]
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(sources))) as pool:
    return list(pool.map(lambda si: run_program(si[0], timeout, stdin=si[1], **kwargs),
                         zip(sources, stdins)))


def sandbox_available() -> bool:
  """True if bubblewrap can run programs here."""
  try:
    _check_sandbox()
    return True
  except SandboxUnavailable:
    return False

