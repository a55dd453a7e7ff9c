r"""Your own problems from a tfds dataset or a seqio Task, with a field mapping.

A curriculum or eval entry names the source, the dataset / Task, and which field of an example is
the statement, the privileged information, the answer (math) or the tests (code):

    tfds:1:dataset=my_math;data_dir=/data/tfds;statement=question;answer=answer;answer_after=####
    seqio:1:task=my_code_task;module=my_pkg.tasks;statement=inputs;privileged=code;tests=test_list

Arguments (`key=value`, separated by `;`):
  dataset       tfds: the dataset's name (read from `data_dir`, never downloaded; `version=`
                to pin one).
  task          seqio: the Task / Mixture name (`module=` imports the module registering it).
  statement     field the student sees. Nested features: `a.b`.
  answer        math: field of the final answer (`answer_after=MARK` keeps the text after the
                last MARK, e.g. GSM8K's `####`).
  tests         code: field of the tests (a list of statements, or one string run as one test);
                `entry_point=FIELD` names the function (default: the first function the first
                test calls that the reference defines).
  privileged    field the teacher sees (code: the reference solution, required; math: default
                `Final answer: <answer>`).
  id            field of a stable id (default: the example's index in its split).
  domain        math | code (default: code when `tests` is given).
  train_split, eval_split   the source's splits behind our "train" and "eval" ("test" reads
                eval_split too); defaults "train" and "test".
  answer_format (math), timeout / allow_unsafe (code): as for the built-in tasks.

Problems carry `task="tfds"` / `"seqio"`; their verifier settings travel in `Problem.meta`, so a
task built without arguments (what rollouts look up by name) verifies them the same way.
TensorFlow, tfds and seqio are imported only when a source is read.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Iterable, Mapping, Sequence

from sml_jax.tasks import code as code_lib
from sml_jax.tasks import math_task
from sml_jax.tasks.base import Problem, Verdict, subset

SOURCES = ("tfds", "seqio")
DOMAINS = ("math", "code")


@dataclasses.dataclass(frozen=True)
class FieldMap:
  """Which field of an example fills which part of a Problem (None: not mapped)."""
  statement: str
  answer: str | None = None
  privileged: str | None = None
  tests: str | None = None
  entry_point: str | None = None
  id: str | None = None
  answer_after: str | None = None


def field(example: Mapping[str, Any], path: str, where: str) -> Any:
  """`example[a][b]` for path "a.b"; a missing field raises naming the fields there are."""
  value: Any = example
  for part in path.split("."):
    if not isinstance(value, Mapping) or part not in value:
      have = sorted(value) if isinstance(value, Mapping) else type(value).__name__
      raise ValueError(f"{where}: no field {path!r} (fields: {have})")
    value = value[part]
  return value


def to_text(value: Any) -> str:
  """bytes / numpy scalars / 0-d arrays -> str (numbers without a trailing `.0`)."""
  if hasattr(value, "ndim") and value.ndim == 0:
    value = value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  if isinstance(value, (str, int, float)):
    return str(value)
  raise ValueError(f"expected a text or number, got {type(value).__name__}")


def to_texts(value: Any) -> tuple[str, ...]:
  """A list / 1-d array of texts -> tuple of str; a single text -> a 1-tuple."""
  if isinstance(value, (bytes, str)) or (hasattr(value, "ndim") and value.ndim == 0):
    return (to_text(value),)
  return tuple(to_text(v) for v in value)


def to_problem(example: Mapping[str, Any], index: int, *, fields: FieldMap, task: str, domain: str,
               where: str, meta: Mapping[str, Any]) -> Problem:
  """One source example -> Problem; a missing or empty field raises naming `where`."""
  where = f"{where} example {index}"
  try:
    statement = to_text(field(example, fields.statement, where)).strip()
    if not statement:
      raise ValueError("empty statement")
    pid = to_text(field(example, fields.id, where)) if fields.id else str(index)
    privileged = (to_text(field(example, fields.privileged, where)).strip()
                  if fields.privileged else "")
    if domain == "math":
      answer = to_text(field(example, fields.answer, where))
      if fields.answer_after:
        if fields.answer_after not in answer:
          raise ValueError(f"answer field has no {fields.answer_after!r}")
        answer = answer.rsplit(fields.answer_after, 1)[1]
      answer = answer.strip().replace(",", "")
      if not answer:
        raise ValueError("empty answer")
      return Problem(id=pid, task=task, domain=domain, statement=statement,
                     privileged=privileged or f"Final answer: {answer}", answer=answer,
                     meta=dict(meta, index=index))
    tests = tuple(t for t in to_texts(field(example, fields.tests, where)) if t.strip())
    if not tests:
      raise ValueError("no tests")
    if not privileged:
      raise ValueError("a code problem needs the reference solution (privileged=FIELD)")
    if fields.entry_point:
      entry = to_text(field(example, fields.entry_point, where))
    else:
      defined = set(code_lib.defined_functions(privileged))
      entry = code_lib.called_function(tests[0], defined)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  return Problem(id=pid, task=task, domain=domain, statement=statement, privileged=privileged,
                 tests=tests, entry_point=entry, meta=dict(meta, index=index, test_setup=""))


def read_tfds(name: str, split: str, data_dir: str | None, version: str | None = None
              ) -> Iterable[Mapping[str, Any]]:
  """Examples of a prepared tfds dataset in `data_dir`, in file order, as numpy; never
  downloads (a dataset not prepared there raises)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not data_dir:
    raise ValueError("tfds needs data_dir= (the directory the dataset was prepared in)")
  try:
    builder = tfds.builder(f"{name}:{version}" if version else name, data_dir=data_dir)
  except Exception as e:  # tfds raises its own DatasetNotFoundError / registered-name errors.
    raise ValueError(f"tfds dataset {name!r} not found in data_dir {data_dir}: {e}") from None
  if split not in builder.info.splits:
    raise ValueError(f"tfds dataset {name!r} has no split {split!r} (splits: "
                     f"{sorted(builder.info.splits)})")
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return tfds.as_numpy(ds)


def read_seqio(name: str, split: str, module: str | None = None) -> Iterable[Mapping[str, Any]]:
  """Examples of a registered seqio Task or Mixture (after its preprocessors, not shuffled)."""
  import seqio  # pylint: disable=g-import-not-at-top
  if module:
    importlib.import_module(module)
  try:
    task = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"seqio Task {name!r} is not registered"
                     f"{'' if module else ' (module= imports the module that registers it)'}: "
                     f"{e}") from None
  if split not in task.splits:
    raise ValueError(f"seqio Task {name!r} has no split {split!r} (splits: {sorted(task.splits)})")
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False,
                        num_epochs=1)
  return ds.as_numpy_iterator()


class ExternalTask:
  """Problems from tfds or seqio (see the module docstring). Verifies math and code problems by
  their domain, with the settings they carry in `meta`."""

  domain = "mixed"

  def __init__(self, source: str, name: str | None = None, *, statement: str | None = None,
               answer: str | None = None, privileged: str | None = None,
               tests: str | None = None, entry_point: str | None = None, id: str | None = None,  # pylint: disable=redefined-builtin
               answer_after: str | None = None, domain: str | None = None,
               train_split: str = "train", eval_split: str = "test", data_dir: str | None = None,
               version: Any = None, module: str | None = None, answer_format: str = "strict",
               timeout: float = 5.0, allow_unsafe: bool = False):
    if source not in SOURCES:
      raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    self.name = source
    self.source_name = name
    self.data_dir, self.module = data_dir, module
    self.version = None if version is None else str(version)
    self.splits = {"train": str(train_split), "eval": str(eval_split), "test": str(eval_split)}
    self.answer_format = math_task.check_answer_format(answer_format)
    if domain is None:
      domain = "code" if tests else "math"
    if domain not in DOMAINS:
      raise ValueError(f"{source}: domain must be one of {DOMAINS}, got {domain!r}")
    self.problem_domain = domain
    self.fields = None
    if name is not None:  # A verifier-only instance (no name) needs no mapping.
      if not statement:
        raise ValueError(f"{source}:{name}: statement=FIELD is required")
      if domain == "math" and not answer:
        raise ValueError(f"{source}:{name}: a math source needs answer=FIELD (or tests=FIELD for "
                         "code)")
      if domain == "code" and not (tests and privileged):
        raise ValueError(f"{source}:{name}: a code source needs tests=FIELD and privileged=FIELD "
                         "(the reference solution)")
      self.fields = FieldMap(statement=statement, answer=answer, privileged=privileged,
                             tests=tests, entry_point=entry_point, id=id,
                             answer_after=answer_after)
    if not timeout > 0:
      raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    self.timeout, self.allow_unsafe = float(timeout), bool(allow_unsafe)
    self._cache: dict[str, list[Problem]] = {}
    self._verifiers: dict[tuple, Any] = {}

  # -- problems --
  def _read(self, split: str) -> Iterable[Mapping[str, Any]]:
    if self.name == "tfds":
      return read_tfds(self.source_name, split, self.data_dir, self.version)
    return read_seqio(self.source_name, split, self.module)

  def all_problems(self, split: str) -> list[Problem]:
    if self.fields is None:
      raise ValueError(f"{self.name}: {'dataset' if self.name == 'tfds' else 'task'}=<name> is "
                       "required to read problems")
    math_task.check_split(split)
    source_split = self.splits[split]
    if source_split not in self._cache:
      where = f"{self.name}:{self.source_name}[{source_split}]"
      meta = {"source": self.name, "source_name": self.source_name, "split": source_split,
              "answer_format": self.answer_format, "timeout": self.timeout,
              "allow_unsafe": self.allow_unsafe}
      problems = [to_problem(ex, i, fields=self.fields, task=self.name,
                             domain=self.problem_domain, where=where, meta=meta)
                  for i, ex in enumerate(self._read(source_split))]
      if not problems:
        raise ValueError(f"{where}: no examples")
      ids = [p.id for p in problems]
      if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: problem ids (id={self.fields.id}) are not unique")
      self._cache[source_split] = problems
    return self._cache[source_split]

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    """The split's problems in a seeded shuffled order, truncated to `limit`."""
    return subset(self.all_problems(split), limit, seed)

  # -- verification, by the problem's domain and the settings it carries --
  def _verifier(self, problem: Problem):
    meta = problem.meta
    if problem.domain == "code":
      key = ("code", meta.get("timeout", self.timeout), meta.get("allow_unsafe", self.allow_unsafe))
      if key not in self._verifiers:
        self._verifiers[key] = code_lib.CodeTask(timeout=key[1], allow_unsafe=key[2])
    else:
      key = ("math", meta.get("answer_format", self.answer_format))
      if key not in self._verifiers:
        verifier = math_task.MathTask()
        verifier.answer_format = math_task.check_answer_format(key[1])
        self._verifiers[key] = verifier
    return self._verifiers[key]

  def verify(self, problem: Problem, student_text: str) -> Verdict:
    return self._verifier(problem).verify(problem, student_text)

  def verify_batch(self, problems: Sequence[Problem], texts: Sequence[str]) -> list[Verdict]:
    if len(problems) != len(texts):
      raise ValueError(f"{len(problems)} problems but {len(texts)} texts")
    out: list[Verdict | None] = [None] * len(problems)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(problems):  # One batch per verifier (code runs its batch in parallel).
      groups.setdefault(id(self._verifier(p)), []).append(i)
    for idx in groups.values():
      verdicts = self._verifier(problems[idx[0]]).verify_batch(
          [problems[i] for i in idx], [texts[i] for i in idx])
      for i, v in zip(idx, verdicts):
        out[i] = v
    return out

  def leaked(self, problem: Problem, text: str) -> bool:
    return self._verifier(problem).leaked(problem, text)

  def redact(self, problem: Problem, text: str) -> str:
    return self._verifier(problem).redact(problem, text)


class TfdsTask(ExternalTask):
  """`tfds`: a prepared tfds dataset read from a local `data_dir`."""

  def __init__(self, dataset: str | None = None, **kwargs):
    super().__init__("tfds", dataset, **kwargs)


class SeqioTask(ExternalTask):
  """`seqio`: a registered seqio Task or Mixture."""

  def __init__(self, task: str | None = None, **kwargs):
    super().__init__("seqio", task, **kwargs)
