"""Runs a candidate program against its tests INSIDE the sandbox. Standard library only: this file's
text is the sandbox's main program (`code_exec` ships it), it is never imported on the host.

stdin: JSON {"nonce": str, "program": str, "setup": str, "tests": [str, ...],
             "entry_point": str | null (optional: the function the tests call)}.
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
The program runs as module `solution` (not `__main__`: its demo / input() blocks do not run).

Reward hacks through the values compared (the student's code runs in this process, so it can
patch anything a check would call):
- Every value a test's comparison, arithmetic, `not` / `and` / `or` or `assert` looks at is first
  reduced to plain data (`_plain`: exact ints, floats, strings, ... and lists / tuples / dicts /
  sets of them, rebuilt by this harness through the builtin types' own methods), so the builtin
  types' comparisons decide, never the student's: an object whose `__eq__` always returns True,
  an `int` subclass that equals everything, a `__bool__` that is always True, or an object that
  only pretends (`__sub__` returning 0 in `abs(f(x) - y) < 1e-9`) cannot pass. Subclasses of the
  builtin value types are reduced to their base value; other objects of classes defined in
  Python (the student's, `fractions.Fraction`) cannot be compared: the test fails and says why.
  Objects of C types (`range`, numpy scalars) are compared by their own (unpatchable) equality.
- The tests run in their own namespace (a copy of the program's, without names that shadow
  builtins other than the entry point) with a private copy of the builtins taken before the program ran; the program
  replacing a function of `builtins`, `math`, `operator`, `functools`, `itertools`,
  `collections`, `re`, `json` or `os` (checked after it loads and after every test) fails the run.
- The harness itself only calls functions it bound before the program ran.
This stops cheap accidents and hacks, not a program that digs the nonce or the harness's frames
out of this process, or patches a class's internals (e.g. `json.JSONEncoder.encode`).
"""

import ast
import builtins
import collections
import functools
import itertools
import json
import linecache
import math
import operator
import os
import re
import sys
import types

# Bound before the program runs: what it does to builtins or modules cannot reach these.
_exec, _compile, _type, _isinstance, _issubclass, _repr, _len = (
    exec, compile, type, isinstance, issubclass, repr, len)
_BaseException, _AssertionError, _SystemExit = BaseException, AssertionError, SystemExit
_dumps, _write, _dict_items, _list, _tuple = json.dumps, os.write, dict.items, list, tuple
_deque, _OrderedDict, _defaultdict = collections.deque, collections.OrderedDict, collections.defaultdict
_type_flags = type.__dict__["__flags__"].__get__
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class created by a class statement
_BUILTINS = dict(vars(builtins))
_WATCHED = (builtins, math, operator, functools, itertools, collections, re, json, os)
_SNAPSHOT = [(m, dict(vars(m))) for m in _WATCHED]
_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_MAX_DEPTH = 100


class NotComparable(TypeError):
  pass


def _plain(x, depth=0):
  """`x` as plain data the builtin types compare (see the module docstring)."""
  t = _type(x)
  if t in _SCALARS:
    return x
  if depth > _MAX_DEPTH:
    raise NotComparable("value nested too deeply to compare")
  if t is list or t is _deque:
    return [_plain(e, depth + 1) for e in t.__iter__(x)]
  if t is tuple:
    return _tuple(_plain(e, depth + 1) for e in _tuple.__iter__(x))
  if t in (set, frozenset):
    return t(_plain(e, depth + 1) for e in t.__iter__(x))
  if t is dict or t is _OrderedDict or t is _defaultdict:
    return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in _dict_items(x)}
  if not _type_flags(t) & _HEAPTYPE:
    return x  # a C type (range, numpy scalar): its equality cannot be patched
  for base, zero in ((int, 0), (float, 0.0), (complex, 0j), (str, ""), (bytes, b"")):
    if _issubclass(t, base):  # the base type's own addition returns an exact base value
      return base.__add__(x, zero)
  for base in (list, tuple, set, frozenset):
    if _issubclass(t, base):
      return _plain(base(base.__iter__(x)), depth)
  if _issubclass(t, dict):  # Counter, user dict subclasses: their items, compared as a dict
    return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in _dict_items(x)}
  raise NotComparable(
      f"the tests cannot compare an object of type {getattr(t, '__qualname__', '?')!s}: return "
      "plain Python values (numbers, strings, lists, tuples, dicts, sets)")


_OPERANDS = (ast.Compare, ast.BinOp, ast.UnaryOp, ast.BoolOp)


class _PlainOperands(ast.NodeTransformer):
  """Wraps in `__sml_plain__(...)` every operand of a comparison, arithmetic or boolean
  operator, every `assert`'s condition, and every call whose result is indexed or has an
  attribute taken. Constants are left alone."""

  @staticmethod
  def _wrap(node, calls_only=False):
    if _isinstance(node, ast.Constant) or (calls_only and not _isinstance(node, ast.Call)):
      return node
    return ast.copy_location(ast.Call(ast.Name("__sml_plain__", ast.Load()), [node], []), node)

  def generic_visit(self, node):
    super().generic_visit(node)
    if _isinstance(node, ast.Compare):
      node.left = self._wrap(node.left)
      node.comparators = [self._wrap(c) for c in node.comparators]
    elif _isinstance(node, ast.BinOp):
      node.left, node.right = self._wrap(node.left), self._wrap(node.right)
    elif _isinstance(node, ast.UnaryOp):
      node.operand = self._wrap(node.operand)
    elif _isinstance(node, ast.BoolOp):
      node.values = [self._wrap(v) for v in node.values]
    elif _isinstance(node, ast.Assert):
      node.test = self._wrap(node.test)
    elif _isinstance(node, (ast.Subscript, ast.Attribute)) and _isinstance(node.ctx, ast.Load):
      node.value = self._wrap(node.value, calls_only=True)
    return node


def _compile_test(source, filename):
  tree = _PlainOperands().visit(ast.parse(source, filename))
  return _compile(ast.fix_missing_locations(tree), filename, "exec")


def _patched():
  """The first watched module attribute the program replaced, as "module.name", else None.
  Every replaced attribute is put back (so reporting, which uses json, works again)."""
  first = None
  for module, before in _SNAPSHOT:
    now = vars(module)
    for name, value in _dict_items(before):
      if now.get(name, value) is not value:
        first = first or f"{module.__name__}.{name}"
        now[name] = value
  return first

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
    _write(out, nonce + _dumps(event).encode() + b"\n")

  module = types.ModuleType("solution")
  module.__file__ = "solution.py"
  sys.modules["solution"] = module
  ns = module.__dict__
  for stage, filename, source in (("program", "solution.py", spec["program"]),
                                  ("setup", "<test setup>", spec.get("setup") or "")):
    _register(filename, source)
    try:
      _exec(_compile(source, filename, "exec"), ns)
    except _BaseException as e:  # SystemExit too: exit() before the tests is a failure
      report(event="error", stage=stage, error=_format_error(e))
      return
    patched = _patched()
    if patched:
      report(event="error", stage=stage, error=f"The program replaced {patched}; patching "
             "builtins or library functions is not allowed.")
      return
    if stage == "program":
      report(event="loaded")
  # The tests' own namespace: the program's names (minus those shadowing builtins, but the entry
  # point: MBPP has a `def sum(a, b)`), pristine builtins, and the value reducer.
  entry = spec.get("entry_point")
  test_ns = {k: v for k, v in _dict_items(ns)
             if k not in _BUILTINS or k.startswith("__") or k == entry}
  test_ns["__builtins__"] = dict(_BUILTINS)
  test_ns["__sml_plain__"] = _plain
  test_files = set()
  for i, test in enumerate(spec["tests"]):
    filename = f"<test {i + 1}>"
    _register(filename, test)
    test_files.add(filename)
    report(event="start", test=i)
    error = None
    try:
      _exec(_compile_test(test, filename), test_ns)
    except _BaseException as e:  # pylint: disable=broad-except
      error = e
    patched = _patched()  # checked (and undone) whatever the test's outcome
    if patched:
      report(event="test", test=i, ok=False, kind="error", error=f"The program replaced "
             f"{patched}; patching builtins or library functions is not allowed.")
      return
    if error is None:
      report(event="test", test=i, ok=True)
      continue
    failed = _failed_assert(error, test_files) if _isinstance(error, _AssertionError) else None
    if failed:
      report(event="test", test=i, ok=False, kind="assert", assertion=failed[0], got=failed[1])
    else:
      report(event="test", test=i, ok=False, kind="error", error=_format_error(error))
  report(event="done")


if __name__ == "__main__":
  main()
