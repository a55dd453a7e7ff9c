"""Q-priming's question writer: a failed attempt -> one question the student could have asked.

The model is prompted with the privileged information and the failed attempt (`prompts.qprime_prompt`)
and asked for one informative question that does not give the answer away; the question replaces
the attempt in the student's context (`episode`), so the student is trained to ask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import prompts
from sml_jax.dialogue import turn_end
from sml_jax.dialogue.conversation import Conversation, opening_segment

FALLBACK = "Could you give me a hint?"


def write_questions(sampler, params, tokenizer, convs: Sequence[Conversation], *, max_tokens: int,
                    temperature: float, fewshot: bool, seed: int, row_ids: np.ndarray) -> list[str]:
  """One question per conversation, about its latest (failed) student turn. `row_ids` int64
  [len(convs)]: the conversations' global rows (the keys of the sampler's random draws)."""
  demos = prompts.qprime_demos(fewshot)
  qprompts = [opening_segment(tokenizer, prompts.qprime_prompt(c.problem, c.turns[-1].text),
                              demos)[0].tolist() for c in convs]
  out = sampler.generate(params, qprompts, max_new_tokens=max_tokens, temperature=temperature,
                         seed=seed, row_ids=row_ids)
  return [_question(cf.decode_turn(tokenizer, toks)) for toks in out.tokens]


def _question(text: str) -> str:
  """The first line of `text`, up to its first question (the model goes on after it)."""
  cut = turn_end.student_cut(text, "math") if "?" in text else None
  return (text[:cut] if cut else text).split("\n")[0].strip() or FALLBACK
