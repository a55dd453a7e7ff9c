"""The code sandbox: hostile programs are stopped or see nothing, the host is unharmed, the runner
always returns. Needs bubblewrap (`.ci/run` installs it); these tests fail, not skip, without it."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from sml_jax import sandbox
from sml_jax.sandbox import bwrap, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 3.0


def run(code: str, timeout: float = TIMEOUT, **kwargs) -> sandbox.RunResult:
  t0 = time.monotonic()
  result = sandbox.run_program(textwrap.dedent(code), timeout, **kwargs)
  # Never hangs: at most the timeout plus the kill grace and process start-up.
  assert time.monotonic() - t0 < timeout + 4, result
  assert result.sandboxed
  return result


def leftover_processes(uid: int) -> list[int]:
  """Host pids still running as a run's throwaway uid (none may outlive the run)."""
  assert bwrap._UID_RANGE[0] <= uid < bwrap._UID_RANGE[1]  # a sandbox uid, not root's
  pids = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/status") as f:
        if int(next(l for l in f if l.startswith("Uid:")).split()[1]) == uid:
          pids.append(int(pid))
    except (OSError, StopIteration):
      continue
  return pids


def uid_of(result: sandbox.RunResult) -> int:
  """The programs below print `uid <n>` first."""
  assert result.stdout.startswith("uid "), result
  return int(result.stdout.split()[1])


def test_runs_a_program_and_reports_output():
  r = run("""
    import sys
    print("out", sum(range(10)))
    print("err", file=sys.stderr)
    sys.exit(3)
  """)
  assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (3, "out 45\n", "err\n", False)
  r = run("raise ValueError('boom')")
  assert r.exit_code == 1 and "ValueError: boom" in r.stderr


def test_stdin_and_extra_files():
  r = run("import sys, helper; print(helper.X, sys.stdin.read())", files={"helper.py": "X = 7"},
          stdin="hello")
  assert r.stdout == "7 hello\n", r


def test_no_network():
  host = socket.socket()
  host.bind(("127.0.0.1", 0))
  host.listen()
  port = host.getsockname()[1]
  try:
    r = run(f"""
      import socket
      for addr in [("127.0.0.1", {port}), ("1.1.1.1", 80), ("8.8.8.8", 53)]:
        try:
          socket.create_connection(addr, timeout=1)
          print("CONNECTED", addr)
        except OSError as e:
          print("blocked", type(e).__name__)
      try:
        socket.getaddrinfo("pypi.org", 443)
        print("RESOLVED")
      except OSError:
        print("no dns")
    """)
  finally:
    host.close()
  assert r.stdout.count("blocked") == 3 and "no dns" in r.stdout, r
  assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout


def test_cannot_read_outside_its_dir():
  paths = ["/etc/shadow", "/etc/passwd", "/work/shared", "/work/main", os.path.expanduser("~"),
           REPO, sys.prefix, "/home", os.path.join(bwrap.interpreter()[1], "lib/python3.12/site-packages/pip")]
  r = run(f"""
    import os
    for p in {paths!r}:
      try:
        print("READ", p, os.listdir(p) if os.path.isdir(p) else open(p).read(20))
      except OSError as e:
        print("denied", type(e).__name__)
    print("root:", sorted(os.listdir("/")))
    print("proc pids:", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
  """)
  assert r.stdout.count("denied") == len(paths) - 1, r  # ~ is /root: only the python prefix's path
  assert "READ /root ['.pyenv']" in r.stdout, r            # ... the empty skeleton above it
  assert "root: ['dev', 'lib', 'lib64', 'proc', 'root', 'sandbox', 'tmp', 'usr']" in r.stdout
  assert "proc pids: [1, 2]" in r.stdout  # its own pid namespace: bwrap's init and itself


def test_cannot_write_outside_tmp(tmp_path):
  marker = tmp_path / "pwned"
  prefix = bwrap.interpreter()[1]
  targets = ["/sandbox/x", "/usr/lib/x", "/x", f"{prefix}/x", "/dev/shm/x", str(marker),
             os.path.join(REPO, "pwned")]
  r = run(f"""
    for p in {targets!r}:
      try:
        open(p, "w").write("x")
        print("WROTE", p)
      except OSError as e:
        print("denied", type(e).__name__)
    open("/tmp/ok", "w").write("fine")
    print("tmp:", open("/tmp/ok").read())
    try:
      open("/tmp/big", "wb").write(b"x" * (200 << 20))  # over the file-size limit
    except OSError as e:
      print("big write stopped")
  """)
  assert r.stdout.count("denied") == len(targets) and "tmp: fine" in r.stdout, r
  # RLIMIT_FSIZE sends SIGXFSZ: the default action kills the program at the oversized write.
  assert "big write stopped" in r.stdout or r.exit_code == 128 + 25, r
  assert not marker.exists() and not os.path.exists(os.path.join(REPO, "pwned"))


def test_environment_is_not_inherited(monkeypatch):
  monkeypatch.setenv("SML_SANDBOX_SECRET", "hunter2-secret")
  r = run("""
    import os
    print(sorted(os.environ))
    for p in ["/proc/self/environ", "/proc/1/environ"]:
      try:
        print(open(p, "rb").read())
      except OSError as e:
        print("denied", p)
  """)
  assert "hunter2" not in r.stdout and "SML_SANDBOX_SECRET" not in r.stdout, r
  assert "['HOME', 'LANG', 'PATH', 'PWD']" in r.stdout


def test_cannot_spawn_a_shell():
  r = run("""
    import os, subprocess
    print("system:", os.system("echo SHELL-RAN"))
    for cmd in (["sh", "-c", "echo SHELL-RAN"], ["/bin/sh", "-c", "echo SHELL-RAN"],
                ["/usr/bin/env", "bash"], ["/usr/bin/python3", "-V"]):
      try:
        subprocess.run(cmd)
        print("SPAWNED", cmd)
      except OSError as e:
        print("no", type(e).__name__)
  """)
  assert "SHELL-RAN" not in r.stdout and "SPAWNED" not in r.stdout, r
  assert r.stdout.count("no FileNotFoundError") == 4 and "system: 32512" in r.stdout  # 127 << 8


def test_fork_bomb_is_contained():
  r = run("""
    import os
    print("uid", os.getuid())
    n = 0
    while True:
      try:
        if os.fork() == 0:
          n = 0
        else:
          n += 1
      except OSError:
        pass
  """, timeout=2)
  assert r.timed_out, r
  assert leftover_processes(uid_of(r)) == []  # the pid namespace died with the run
  assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_fork_bomb_hits_the_process_limit():
  r = run("""
    import os, sys
    print("uid", os.getuid())
    kids = []
    try:
      for _ in range(1000):
        pid = os.fork()
        if pid == 0:
          import time; time.sleep(30)
          os._exit(0)
        kids.append(pid)
    except OSError as e:
      print("fork refused after", len(kids), type(e).__name__)
    sys.stdout.flush()
    os._exit(0)
  """, limits=bwrap.Limits(processes=16))
  assert "fork refused after" in r.stdout, r
  assert int(r.stdout.split()[5]) < 16
  time.sleep(0.2)
  assert leftover_processes(uid_of(r)) == []  # the sleeping children died with the sandbox


def test_memory_bomb_is_stopped():
  r = run("""
    blocks = []
    try:
      while True:
        blocks.append(bytearray(64 << 20))
    except MemoryError:
      print("stopped at", len(blocks) * 64, "MiB")
  """, limits=bwrap.Limits(memory_bytes=512 << 20))
  assert "stopped at" in r.stdout, r
  assert int(r.stdout.split()[2]) <= 512
  r = run("x = bytearray(8 << 30)")  # one huge allocation
  assert r.exit_code == 1 and "MemoryError" in r.stderr, r


def test_tmp_filler_is_stopped():
  r = run("""
    i = 0
    try:
      while True:
        with open(f"/tmp/f{i}", "wb") as f:
          f.write(b"x" * (8 << 20))
        i += 1
    except OSError as e:
      print("tmp full after", i * 8, "MiB", e.errno)
  """)
  assert "tmp full after" in r.stdout and int(r.stdout.split()[3]) <= 64, r


def test_infinite_loop_times_out():
  r = run("while True: pass", timeout=1.5)
  assert r.timed_out and r.exit_code != 0, r
  assert 1.4 < r.duration < 4
  r = run("import time; time.sleep(100)", timeout=1)  # idle, not burning CPU: the wall clock
  assert r.timed_out and r.exit_code == -9 and r.duration < 3, r


def test_threads_burning_cpu_hit_the_cpu_limit():
  r = run("""
    import threading
    def spin():
      while True: pass
    for _ in range(4):
      threading.Thread(target=spin).start()
  """, timeout=3)
  assert r.timed_out, r


def test_huge_output_is_capped():
  r = run("""
    import sys
    while True:
      sys.stdout.write("y" * 100000)
  """, timeout=2, limits=bwrap.Limits(output_bytes=1000))
  assert r.truncated and r.timed_out and len(r.stdout) == 1000, (r.truncated, len(r.stdout))


def test_daemon_child_does_not_outlive_the_run():
  r = run("""
    import os, time
    print("uid", os.getuid())
    if os.fork() == 0:
      os.setsid()
      if os.fork() == 0:
        time.sleep(60)
      os._exit(0)
    print("parent exits")
  """)
  assert r.stdout.endswith("parent exits\n") and not r.timed_out and r.duration < 2, r
  time.sleep(0.2)
  assert leftover_processes(uid_of(r)) == []


def test_kill_everything_hurts_nobody():
  r = run("""
    import os, signal
    try:
      os.kill(-1, signal.SIGKILL)  # every process it may signal: none but its own
    except ProcessLookupError:
      print("nobody to kill")
  """)
  assert r.stdout == "nobody to kill\n", r  # and we, the test process, live on


def test_run_many_in_parallel_keeps_order():
  sources = [f"import time; time.sleep(0.3); print({i})" for i in range(6)]
  t0 = time.monotonic()
  results = sandbox.run_many(sources, timeout=5, workers=3)
  assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]
  assert time.monotonic() - t0 < 6 * 0.3 + 1.5  # overlapped, not serial-plus-startup


def test_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="timeout"):
    sandbox.run_program("pass", timeout=0)
  with pytest.raises(ValueError, match="plain file names"):
    sandbox.run_program("pass", files={"../evil.py": ""})
  with pytest.raises(ValueError, match="memory_bytes"):
    bwrap.Limits(memory_bytes=-1)


def test_refuses_without_bubblewrap_unless_unsafe_allowed(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, prlimit or setpriv on PATH
  with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
    sandbox.run_program("print(1)")
  r = sandbox.run_program("import os; print(1, 'SML_X' in os.environ)", allow_unsafe=True)
  assert (r.stdout, r.sandboxed) == ("1 False\n", False)
  r = sandbox.run_program("import time; time.sleep(60)", timeout=1, allow_unsafe=True)
  assert r.timed_out and r.duration < 3


def test_cli_prints_one_json_object_and_imports_no_jax(tmp_path):
  prog = tmp_path / "prog.py"
  prog.write_text("import sys\nprint('hi')\nwhile True: pass\n")
  code = ("import runpy, sys; sys.argv = ['x', %r, '--timeout=1'];"
          "\ntry: runpy.run_module('sml_jax.sandbox', run_name='__main__')"
          "\nexcept SystemExit: pass"
          "\nprint('HEAVY' if {'jax', 'tensorflow', 'gemma', 'numpy'} & set(sys.modules) else 'LIGHT')")
  out = subprocess.run([sys.executable, "-c", code % str(prog)], capture_output=True, text=True,
                       cwd=REPO, timeout=30)
  lines = out.stdout.splitlines()
  assert len(lines) == 2 and lines[1] == "LIGHT", out
  got = json.loads(lines[0])
  assert got["stdout"] == "hi\n" and got["timed_out"] and set(got) >= {"exit_code", "stderr"}
  bad = subprocess.run([sys.executable, "-m", "sml_jax.sandbox", str(tmp_path / "missing.py")],
                       capture_output=True, text=True, cwd=REPO, timeout=30)
  assert bad.returncode == 2 and "cannot read" in bad.stderr
