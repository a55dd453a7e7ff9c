"""Q-priming's question writer: a failed attempt -> one question the student could have asked.

Two writers (`dialogue.qprime_writer`):

  model     the model (the teacher's params) prompted with the privileged information and the
            failed attempt (`prompts.qprime_prompt`), after several demonstrations of its domain
            whose questions are tied to their own problems (`prompts.QPRIME_DEMOS`)
  template  `question_templates.template_question`, built from the privileged information: the missing fact
            of a sharded problem, the first solution step not reached, a test not yet seen

Every question, from either writer, is checked before it replaces the attempt in the student's
context (`episode`): it must be a question, not state the answer (`Task.leaked`), not reproduce
a line of a demonstration (`quality.is_demo_copy`: the writer's or the student's), and fit its
token budget. A model question that fails is rewritten by the template writer (`Written.rejected`
says why); a template question that fails (none should) becomes a generic question.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

import numpy as np

from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import quality
from sml_jax.dialogue import question_templates
from sml_jax.dialogue import prompts
from sml_jax.dialogue.conversation import Conversation, opening_segment
from sml_jax.tasks import turns
from sml_jax.tasks.base import Task

WRITERS = ("model", "template")
FALLBACK = "Could you give me a hint?"


@dataclasses.dataclass(frozen=True)
class Written:
  text: str
  writer: str                 # "model" | "template": who wrote the question the student gets
  rejected: str | None = None  # why the model's question was rewritten: "not_a_question" |
                               # "leak" | "demo_copy" | "too_long"


def demo_lines(c: Conversation, fewshot: bool) -> tuple[str, ...]:
  """Demonstration lines a question for `c` must not reproduce: the question writer's and the
  student's (the question becomes a student turn)."""
  return (prompts.demo_lines(prompts.qprime_demos(c.problem, fewshot)) +
          prompts.demo_lines(prompts.student_demos(c.problem, fewshot, c.teacher_kind),
                             prompt=prompts.student_opening(c.problem)))


def write_questions(convs: Sequence[Conversation], *, writer: str, task_lookup: Callable[[str], Task],
                    tokenizer, max_tokens: int, fewshot: bool, seed: int, row_ids: np.ndarray,
                    sampler=None, params=None, temperature: float = 0.0) -> list[Written]:
  """One checked question per conversation, about its latest (failed) student turn. `row_ids`
  int64 [len(convs)]: the conversations' global rows (the keys of every random draw). The model
  writer sees two of its domain's demonstrations (chosen per row); a row whose prompt would not
  fit the writer's cache gets a template question."""
  if writer not in WRITERS:
    raise ValueError(f"dialogue.qprime_writer must be one of {WRITERS}, got {writer!r}.")
  draws = [random.Random(f"qprime:{seed}:{int(r)}") for r in row_ids]
  drafts: list[str | None] = [None] * len(convs)
  too_long = set()
  if writer == "model":
    qprompts = [opening_segment(tokenizer, prompts.qprime_prompt(c.problem, c.turns[-1].text),
                                _demos(c, fewshot, draw))[0].tolist()
                for c, draw in zip(convs, draws)]
    # A prompt that leaves no room for the question in the writer's cache: template instead.
    too_long = {k for k, q in enumerate(qprompts) if len(q) + max_tokens > sampler.cache_length}
    todo = [k for k in range(len(convs)) if k not in too_long]
    if todo:
      out = sampler.generate(params, [qprompts[k] for k in todo], max_new_tokens=max_tokens,
                             temperature=temperature, seed=seed,
                             row_ids=np.asarray(row_ids)[todo])
      for k, toks in zip(todo, out.tokens):
        drafts[k] = _question(cf.decode_turn(tokenizer, toks))
  written = []
  for k, (c, draft, draw) in enumerate(zip(convs, drafts, draws)):
    check = lambda q: _problem_with(q, c, task_lookup, tokenizer, max_tokens, fewshot)
    rejected = "too_long" if k in too_long else None
    if draft is not None:
      rejected = check(draft)
      if rejected is None:
        written.append(Written(draft, "model"))
        continue
    attempt = c.turns[-1].text
    question = question_templates.template_question(c.problem, attempt, draw, shards_revealed=c.shown_shards)
    if check(question) is not None:
      question = FALLBACK
    written.append(Written(question, "template", rejected))
  return written


def _demos(c: Conversation, fewshot: bool, draw: random.Random, k: int = 2):
  """`k` of the domain's Q-priming demonstrations (question-writer prompts stay short), chosen
  per row: no single demonstration is the one every question is written after."""
  pool = prompts.qprime_demos(c.problem, fewshot)
  pairs = [pool[j:j + 2] for j in range(0, len(pool), 2)]
  chosen = sorted(draw.sample(range(len(pairs)), min(k, len(pairs))))
  return tuple(turn for j in chosen for turn in pairs[j])


def _problem_with(question: str, c: Conversation, task_lookup, tokenizer, max_tokens: int,
                  fewshot: bool) -> str | None:
  """Why `question` may not replace the attempt of `c`, or None if it may."""
  if not turns.is_question(question):
    return "not_a_question"
  if task_lookup(c.problem.task).leaked(c.problem, question):
    return "leak"
  if quality.is_demo_copy(question, demo_lines(c, fewshot)):
    return "demo_copy"
  if len(tokenizer.encode(question)) > max_tokens:
    return "too_long"
  return None


def _question(text: str) -> str:
  """The first non-empty line of `text`, up to its first question mark (the model goes on)."""
  line = next((l.strip() for l in text.splitlines() if l.strip()), "")
  return line[:line.index("?") + 1] if "?" in line else line
