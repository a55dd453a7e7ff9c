"""Task-level redaction (`task.redact`): removes every form the task's leak detector flags, keeps
everything else. The property: `task.leaked(problem, task.redact(problem, text))` is False."""

import pytest

from sml_jax.tasks import code, gsm8k, math_answers
from sml_jax.tasks.base import Problem


def _math(answer, statement, **kw):
  return Problem(id="p", task="gsm8k", domain="math", statement=statement, privileged="",
                 answer=answer, **kw)


BIKES = _math("1200", "A bike costs 300 dollars. How much do 4 bikes cost?")
PIZZA = _math("2.5", "Tom eats 1 pizza and Ann eats 3 halves. How many pizzas do they eat?")
CLIPS = _math("72", "Natalia sold clips to 48 of her friends in April, and then she sold half as "
              "many clips in May. How many clips did Natalia sell altogether?")
SEVEN = _math("7", "Tom has 12 apples and gives away 5. How many are left?")
PUBLIC = _math("48", "Tom has 48 apples and gives none away. How many are left?")
SHARDED = _math("7", "How many are left?", shards=("How many are left?", "Tom has 12.",
                                                   "He gives away 5."))

LEAKS = [
    (BIKES, "That is 1,200 dollars, since 4 * 300 = 1200.", ["4", "300"]),
    (BIKES, "In total $1,200.00.", []),
    (BIKES, "The answer is 1200; 300 is the price of one bike.", ["300"]),
    (BIKES, "So \\boxed{1200}.", []),
    (PIZZA, "They eat 2.50 pizzas: 1 + 1.5.", ["1.5"]),
    (PIZZA, "Together that is 5/2 pizzas.", []),
    (PIZZA, "It is $2.50 worth, or 2.5 pizzas.", []),
    (CLIPS, "Altogether she sold seventy-two clips: 48 + 24.", ["48", "24"]),
    (CLIPS, "48 + 24 = 72, so the final answer is 72.", ["48", "24"]),
    (CLIPS, "Great, so in total that's 72 clips!", []),
    (SEVEN, "12 - 5 leaves seven.", ["12", "5"]),
    (SEVEN, "Final answer: 7", []),
    (PUBLIC, "So the final answer is 48.", []),
    (SHARDED, "12 - 5 leaves 7.", ["12", "5"]),
]


@pytest.mark.parametrize("problem, text, kept", LEAKS)
def test_math_redact_removes_every_flagged_form(problem, text, kept):
  task = gsm8k.GSM8KTask()
  assert task.leaked(problem, text), text
  redacted = task.redact(problem, text)
  assert not task.leaked(problem, redacted), redacted
  assert math_answers.REDACTED in redacted
  assert all(k in redacted for k in kept), (redacted, kept)  # non-answer numbers survive


def test_math_redact_leaves_clean_text_alone():
  task = gsm8k.GSM8KTask()
  for text in ("Look again at how many apples Tom has: 48.", "Add April and May: 48 and 24.",
               "Not quite: 70 is too small."):
    problem = PUBLIC if "apples" in text else CLIPS
    assert task.redact(problem, text) == text


@pytest.fixture(scope="module")
def mbpp():
  return code.MBPPTask(timeout=10.0)


def test_code_redact_removes_fenced_and_unfenced_programs(mbpp):
  p = next(q for q in mbpp.all_problems() if q.id == "mbpp/2")
  texts = [
      f"Just use this:\n```python\n{p.privileged}\n```\nIt intersects the sets.",
      f"Just use this:\n```\n{p.privileged}\n```",
      f"Here it is:\n{p.privileged}\nThat intersects the sets.",
      f"Unclosed:\n```python\n{p.privileged}\n",
      f"Inline ```{p.privileged}``` done.",
  ]
  leaking = [t for t in texts if mbpp.leaked(p, t)]
  assert len(leaking) >= 4  # every form but (maybe) the inline one is a working program
  redacted = [mbpp.redact(p, t) for t in texts]
  assert not any(mbpp.leaked(p, r) for r in redacted), redacted
  assert "intersects the sets" in redacted[0] and "intersects the sets" in redacted[2]
  assert all("def similar_elements" not in r for r in redacted), redacted
  assert mbpp.redact(p, "Think about set intersection.") == "Think about set intersection."


def test_math_redact_property_over_gsm8k_solutions():
  """The worked solutions state their answers in every way GSM8K writes them."""
  import os
  if not os.path.exists(gsm8k.default_train_path()):
    pytest.skip("no GSM8K data")
  task = gsm8k.GSM8KTask()
  problems = task.problems("train", limit=300, seed=3)
  for p in problems:
    for text in (p.privileged, p.privileged.replace("Final answer: ", "So we get $") + ".00"):
      assert not task.leaked(p, task.redact(p, text)), (p.answer, task.redact(p, text))
