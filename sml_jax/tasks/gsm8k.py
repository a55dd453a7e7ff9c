"""GSM8K (Cobbe et al. 2021) from local JSONL files; never downloads.

Splits:
  "train" / "eval": carved from the train file. A problem is in "eval" iff the first 8 hex digits of
    sha256(question with whitespace collapsed) / 16**8 < `eval_fraction` (default 0.1: 740 of the
    7,473 shared train problems); everything else is "train". The split depends on the question
    text only, so it is stable across file order, runs and machines.
  "test": the whole file at `test_path` (e.g. the official test.jsonl), which the user provides.

Each line is {"question": ..., "answer": "<worked solution>\\n#### <final answer>"}.
Problem.answer is the final answer without thousands separators ("1,080" -> "1080");
Problem.privileged is the worked solution without `<<48/2=24>>` calculator annotations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

from sml_jax.tasks import math_task
from sml_jax.tasks.base import Problem, data_dir, read_jsonl

_ANNOTATION = re.compile(r"<<[^<>]*>>")



def default_train_path() -> str:
  return os.path.join(data_dir(), "gsm8k", "train.jsonl")


@dataclasses.dataclass(frozen=True)
class GSM8KRecord:
  question: str
  solution: str   # worked solution, calculator annotations removed, "#### N" line dropped
  answer: str     # final answer, e.g. "1080"
  line: int       # 1-based line number in the source file


def strip_annotations(text: str) -> str:
  """Removes GSM8K calculator annotations: "48/2 = <<48/2=24>>24" -> "48/2 = 24"."""
  return _ANNOTATION.sub("", text)


def parse_answer_field(answer: str) -> tuple[str, str]:
  """Splits a GSM8K `answer` field into (solution, final answer); raises ValueError if malformed."""
  if "####" not in answer:
    raise ValueError("the answer field has no '#### <final answer>' line")
  solution, final = answer.rsplit("####", 1)
  final = final.strip().replace(",", "")
  if not final:
    raise ValueError("the final answer after '####' is empty")
  return strip_annotations(solution).strip(), final


def read_gsm8k(path: str) -> list[GSM8KRecord]:
  """Reads a GSM8K JSONL file; a malformed line raises ValueError naming file and line."""
  records = []
  for lineno, obj in read_jsonl(path, {"question": str, "answer": str}, "GSM8K"):
    try:
      if not obj["question"].strip():
        raise ValueError("empty question")
      solution, final = parse_answer_field(obj["answer"])
    except ValueError as e:
      raise ValueError(f"{path}:{lineno}: malformed GSM8K line: {e}") from None
    records.append(GSM8KRecord(obj["question"].strip(), solution, final, lineno))
  return records


def in_eval_split(question: str, eval_fraction: float) -> bool:
  """Deterministic held-out membership by a hash of the (whitespace-normalized) question."""
  digest = hashlib.sha256(" ".join(question.split()).encode("utf-8")).hexdigest()
  return int(digest[:8], 16) / 16**8 < eval_fraction


def privileged_text(record: GSM8KRecord) -> str:
  return f"{record.solution}\nFinal answer: {record.answer}"


class GSM8KTask(math_task.MathTask):
  """GSM8K word problems; see the module docstring for the splits."""

  name = "gsm8k"

  def __init__(self, path: str | None = None, test_path: str | None = None,
               eval_fraction: float = 0.1, answer_format: str = "strict"):
    self.answer_format = math_task.check_answer_format(answer_format)
    if not 0.0 <= eval_fraction < 1.0:
      raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    self.path = path or default_train_path()
    self.test_path = test_path
    self.eval_fraction = eval_fraction
    self._cache: dict[str, list[GSM8KRecord]] = {}

  def records(self, split: str = "train") -> list[GSM8KRecord]:
    """The split's records in file order."""
    math_task.check_split(split)
    if split == "test":
      if not self.test_path:
        raise ValueError("split='test' needs test_path= (e.g. the official GSM8K test.jsonl)")
      path = self.test_path
    else:
      path = self.path
    if path not in self._cache:
      self._cache[path] = read_gsm8k(path)
    records = self._cache[path]
    if split == "test":
      return records
    want_eval = split == "eval"
    return [r for r in records if in_eval_split(r.question, self.eval_fraction) == want_eval]

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    """The split's problems in a seeded shuffled order, truncated to `limit`."""
    records = self.records(split)
    stem = os.path.splitext(os.path.basename(self.test_path if split == "test" else self.path))[0]
    problems = [
        Problem(id=f"{stem}:{r.line}", task=self.name, domain=self.domain, statement=r.question,
                privileged=privileged_text(r), answer=r.answer, meta={"split": split})
        for r in records
    ]
    return math_task.subset(problems, limit, seed)
