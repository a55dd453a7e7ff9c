"""Runs a candidate program against its tests INSIDE the sandbox. Standard library only: this file's
text is the sandbox's main program (`code_exec` ships it), it is never imported on the host.

stdin: JSON {"nonce": str, "program": str, "setup": str, "tests": [str, ...]}.
Events go to the original stdout, one line each, "<nonce>" + JSON:

    {"event": "loaded"}                         the program ran to its end (defined its functions)
    {"event": "error", "stage": "program" | "setup", "error": str}
    {"event": "start", "test": i}               test i is about to run (tells which one hung)
    {"event": "test", "test": i, "ok": true}
    {"event": "test", "test": i, "ok": false, "kind": "assert", "assertion": str, "got": str}
                                                a test's assert failed (got: repr of the left side
                                                of `left == right`, else "")
    {"event": "test", "test": i, "ok": false, "kind": "error", "error": traceback}
    {"event": "done"}

Only lines carrying the run's nonce (read from stdin, never on disk) count, so a program that exits
early (`exit(0)`) or prints look-alike lines does not pass; the program's own output goes to stderr.
This stops cheap accidents and hacks, not a program that digs the nonce out of this process.
The program runs as module `solution` (not `__main__`: its demo / input() blocks do not run).
"""

import json
import linecache
import os
import sys
import types

_ERROR_CHARS = 2000
_GOT_CHARS = 300


def _register(filename, source):
  """So tracebacks show the source lines of code that has no file."""
  linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def _drop_own_frames(te):
  import traceback
  while te is not None:
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != __file__])
    _drop_own_frames(te.__cause__)
    te = te.__context__


def _format_error(exc):
  """The traceback without this harness's frames, tail-capped."""
  import traceback  # imported on failure only: passing runs start faster
  te = traceback.TracebackException.from_exception(exc)
  _drop_own_frames(te)
  text = "".join(te.format())
  return text if len(text) <= _ERROR_CHARS else "..." + text[-_ERROR_CHARS:]


def _failed_assert(exc, test_files):
  """For an AssertionError raised by an `assert` in the tests (not in the program): (the assert
  statement's source, repr of its left side if it is `left == right`, else "")."""
  import ast, io
  tb, last = exc.__traceback__, None
  while tb is not None:
    last, tb = tb, tb.tb_next
  if last is None or last.tb_frame.f_code.co_filename not in test_files:
    return None
  filename, lineno = last.tb_frame.f_code.co_filename, last.tb_lineno
  source = "".join(linecache.getlines(filename))
  try:
    tree = ast.parse(source)
  except SyntaxError:
    return None
  for node in ast.walk(tree):
    if isinstance(node, ast.Assert) and node.lineno <= lineno <= node.end_lineno:
      statement, got = ast.get_source_segment(source, node) or "", ""
      test = node.test
      if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        # Evaluated again where the assert failed, its prints dropped (already shown once).
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = io.StringIO()
        try:
          value = eval(compile(ast.Expression(test.left), filename, "eval"),
                       last.tb_frame.f_globals, last.tb_frame.f_locals)
          got = repr(value)[:_GOT_CHARS]
        except BaseException:
          pass
        finally:
          sys.stdout, sys.stderr = stdout, stderr
      return statement, got
  return None


def main():
  spec = json.loads(sys.stdin.read())
  out = os.dup(1)           # events channel; fd 1 and sys.stdout now lead to stderr
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  nonce = spec.pop("nonce").encode()

  def report(**event):
    os.write(out, nonce + json.dumps(event).encode() + b"\n")

  module = types.ModuleType("solution")
  module.__file__ = "solution.py"
  sys.modules["solution"] = module
  ns = module.__dict__
  for stage, filename, source in (("program", "solution.py", spec["program"]),
                                  ("setup", "<test setup>", spec.get("setup") or "")):
    _register(filename, source)
    try:
      exec(compile(source, filename, "exec"), ns)
    except BaseException as e:  # SystemExit too: exit() before the tests is a failure
      report(event="error", stage=stage, error=_format_error(e))
      return
    if stage == "program":
      report(event="loaded")
  test_files = set()
  for i, test in enumerate(spec["tests"]):
    filename = f"<test {i + 1}>"
    _register(filename, test)
    test_files.add(filename)
    report(event="start", test=i)
    try:
      exec(compile(test, filename, "exec"), ns)
      report(event="test", test=i, ok=True)
    except BaseException as e:
      failed = _failed_assert(e, test_files) if isinstance(e, AssertionError) else None
      if failed:
        report(event="test", test=i, ok=False, kind="assert", assertion=failed[0], got=failed[1])
      else:
        report(event="test", test=i, ok=False, kind="error", error=_format_error(e))
  report(event="done")


if __name__ == "__main__":
  main()
