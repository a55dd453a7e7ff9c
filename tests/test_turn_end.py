"""Where student turns are cut (`turn_end.student_cut`): answers are kept, questions end at "?"."""

import pytest

from sml_jax.dialogue import turn_end


def _cut(text, domain="math"):
  end = turn_end.student_cut(text, domain)
  return text if end is None else text[:end]


@pytest.mark.parametrize("text, kept", [
    # An answer after a question keeps the answer (today's code cut at the first "?").
    ("What is 6 + 7? 6 + 7 = 13. Final answer: 13", "What is 6 + 7? 6 + 7 = 13. Final answer: 13"),
    ("What is 6 + 7? 6 + 7 = 13. Final answer: 13\nUser: good? Final answer: 12",
     "What is 6 + 7? 6 + 7 = 13. Final answer: 13"),
    # The whole anchored expression (today's code kept "Final answer: 18").
    ("Final answer: 18 + 6 = 24. And then more junk?", "Final answer: 18 + 6 = 24"),
    ("Final answer: $1,200.00 in total", "Final answer: $1,200.00"),
    ("8 + 2 = 10. Final answer: 10 How many apples", "8 + 2 = 10. Final answer: 10"),
    ("So it is \\boxed{7}. Is that right?", "So it is \\boxed{7}"),
    # Code-like junk after the answer, on the same line (the base 270M at temperature 0.7 with
    # the hint demos; the cut kept all 40 tokens of it).
    ('100 + 40 = 125. Final answer: 125 =",125 =",125 "=",125', "100 + 40 = 125. Final answer: 125"),
    ('Final answer: 12 =", 13 =", 13', "Final answer: 12"),
    ("58 - 53 = 37. Final answer: 37.$$ =$$ = $$</tex>", "58 - 53 = 37. Final answer: 37"),
    # A question turn ends after its question.
    ("How many apples did Tom have at the start? He had 3. Final", "How many apples did Tom have "
     "at the start?"),
    ("Did she sell 24 in May? I think so", "Did she sell 24 in May?"),
    # Neither: kept whole.
    ("I am thinking about it", "I am thinking about it"),
    ("Final answer: I do not know", "Final answer: I do not know"),
])
def test_math_student_cut_keeps_the_answer(text, kept):
  assert _cut(text) == kept


def test_code_student_cut_keeps_a_program_after_a_question():
  text = "Should I use a set? Yes:\n```python\ndef f(a):\n    return set(a)\n```\nMore text?"
  assert _cut(text, "code") == text[:text.index("```\nMore") + 3]
  assert _cut("Should I use a set? Maybe.", "code") == "Should I use a set?"
