"""The package's shape, read from the source: import layers, no import cycles, short files.

The import graph is built from each module's AST: every `import` / `from ... import` naming
`sml_jax`, at module level AND inside functions (a function-level import is still a dependency;
it only moves its cost). `importlib.import_module` with a computed name (the task registry,
`evaluation.__getattr__`) is not seen: those load modules of their own package only.

LAYERS lists the layers bottom -> top. A module may import modules of its own layer or of a
lower one, never of a higher one; a module belongs to the layer of the longest prefix that
names it (so `sml_jax.models.tokens` sits below `sml_jax.models`). Every module must be
placed: a new top-level module or package fails the test until it is added here.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sml_jax"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Facts every layer shares: named random streams; Gemma's special token ids and roles.
    ("base", ("sml_jax", "sml_jax.rng", "sml_jax.models.tokens")),
    # Infrastructure that knows nothing of models: device meshes, sharding rules, multi-host;
    # the bubblewrap sandbox (standard library only).
    ("infrastructure", ("sml_jax.parallel", "sml_jax.sandbox")),
    # The model (gemma modules, checkpoints, tokenizer), the sampler, the tasks and verifiers.
    ("model", ("sml_jax.models", "sml_jax.sampling", "sml_jax.tasks")),
    # Training kernels: batching, losses, log-probs, the train step, optimizer, checkpoints.
    ("training kernels", ("sml_jax.training",)),
    # The dialogue protocol: chat format, prompts, parties, teachers, episodes.
    ("dialogue", ("sml_jax.dialogue",)),
    # Metrics, eval files, report (pure python + numpy over transcripts).
    ("evaluation", ("sml_jax.evaluation",)),
    # Running an experiment: the typed run spec and the config boundary, the roles, the stages
    # (conversations -> examples, the trainer, the driver).
    ("stages", ("sml_jax.spec", "sml_jax.config", "sml_jax.experiment", "sml_jax.stages")),
    # Entry points and tools on top of everything.
    ("entry points", ("sml_jax.main", "sml_jax.bench", "sml_jax.plan", "sml_jax.planning",
                      "sml_jax.generate", "sml_jax.study")),
)

MAX_LINES = 450
# Known exceptions, each with the work that removes it. `test_known_exceptions_are_current`
# fails once an exception is no longer needed, so the list cannot go stale.
LONG_FILES: dict[str, str] = {}
KNOWN_CYCLES: dict[frozenset, str] = {}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known) -> str | None:
  """The longest known module that `name` (a dotted import target) starts with."""
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    candidate = ".".join(parts[:n])
    if candidate in known:
      return candidate
  return None


def import_graph() -> dict[str, set[str]]:
  """{module: modules of sml_jax it imports}, from module- and function-level imports."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    is_package = path.name == "__init__.py"
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:   # relative: from the module's package
          package = name.split(".") if is_package else name.split(".")[:-1]
          package = package[:len(package) - node.level + 1]
          base = ".".join(package + ([base] if base else []))
        # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                   for a in node.names]
      for target in targets:
        if target == "sml_jax" or target.startswith("sml_jax."):
          resolved = _resolve(target, modules)
          assert resolved is not None, f"{path}:{node.lineno} imports unknown module {target}"
          if resolved != name:
            edges.add(resolved)
    graph[name] = edges
  return graph


def layer_of(module: str) -> int:
  best, best_len = None, -1
  for index, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
        best, best_len = index, len(prefix)
  if best is None:
    raise AssertionError(f"{module} is in no layer: add it (or its package) to LAYERS in "
                         f"{__file__}.")
  return best


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(frozenset(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _line_counts() -> dict[str, int]:
  return {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
          for p in sorted(PACKAGE.rglob("*.py"))}


def test_graph_sees_module_and_function_level_imports():
  graph = import_graph()
  assert "sml_jax.sampling.decode" in graph["sml_jax.sampling.sampler"]   # module level
  assert "sml_jax.stages.driver" in graph["sml_jax.main"]                  # inside main()
  assert "sml_jax.models.embedded" in graph["sml_jax.models.registry"]     # from pkg import mod


def test_every_module_has_a_layer():
  for module in import_graph():
    layer_of(module)


def test_no_module_imports_from_a_layer_above():
  graph = import_graph()
  bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
         for m in sorted(graph) for t in sorted(graph[m]) if layer_of(t) > layer_of(m)]
  assert not bad, "Imports from a higher layer:\n  " + "\n  ".join(bad)


def test_nothing_below_dialogue_imports_dialogue():
  dialogue = layer_of("sml_jax.dialogue")
  graph = import_graph()
  bad = [m for m in graph if layer_of(m) < dialogue
         and any(t.startswith("sml_jax.dialogue") for t in graph[m])]
  assert not bad, bad


def test_no_import_cycles():
  found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
  assert not found, "Import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_no_long_files():
  long = {f: n for f, n in _line_counts().items() if n > MAX_LINES and f not in LONG_FILES}
  assert not long, f"Files over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("kind", ["long_files", "cycles"])
def test_known_exceptions_are_current(kind):
  """An exception that no longer applies must be deleted from this file."""
  if kind == "long_files":
    counts = _line_counts()
    stale = [f for f in LONG_FILES if counts.get(f, 0) <= MAX_LINES]
  else:
    found = set(cycles(import_graph()))
    stale = [sorted(c) for c in KNOWN_CYCLES if c not in found]
  assert not stale, f"Remove these from {kind.upper()} in tests/test_layers.py: {stale}"
