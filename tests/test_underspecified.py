"""Sharded (Lost-in-Conversation style) problems: GSM8K sharding, premature attempts, LiC loader."""

import collections
import json
import logging
import os

import pytest

from sml_jax.tasks import gsm8k, math_answers, underspecified
from sml_jax.tasks.base import Problem
from sml_jax.tasks.registry import get_task

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "sharded_instructions_sample.json")
GSM8K_TRAIN = gsm8k.default_train_path()
needs_gsm8k = pytest.mark.skipif(not os.path.exists(GSM8K_TRAIN),
                                 reason=f"GSM8K train split not at {GSM8K_TRAIN}")


@pytest.mark.parametrize("question, shards", [
    ("Tom has 3 apples. He buys 2 more. How many apples does he have?",
     ("How many apples does he have?", "Tom has 3 apples.", "He buys 2 more.")),
    ("Tom has 3 apples. He buys 2 more. If he eats 1, how many are left?",
     ("How many are left?", "Tom has 3 apples.", "He buys 2 more.", "He eats 1.")),
    ("Mark has 23 goats. If each goat has 4 legs what is the total number of legs?",
     ("What is the total number of legs?", "Mark has 23 goats.", "Each goat has 4 legs.")),
    ("Irene earns $500 a week. If she worked 50 hours, calculate her total income.",
     ("Calculate her total income.", "Irene earns $500 a week.", "She worked 50 hours.")),
    ("Mrs. Lee bakes 12 pies. How many slices are there? (Each pie has 8 slices.)",
     ("How many slices are there?", "Mrs. Lee bakes 12 pies.", "(Each pie has 8 slices.)")),
])
def test_shard_question(question, shards):
  assert underspecified.shard_question(question) == shards


def test_shard_question_rejects_empty():
  with pytest.raises(ValueError, match="empty"):
    underspecified.shard_question("   ")


@needs_gsm8k
def test_sharding_keeps_every_number_of_every_gsm8k_question():
  """No information is lost: the shards hold exactly the numbers of the question, and the
  opening request is a question or an instruction."""
  counts = collections.Counter()
  for rec in gsm8k.read_gsm8k(GSM8K_TRAIN):
    shards = underspecified.shard_question(rec.question)
    want = sorted(v for _, _, v in math_answers.find_numbers(rec.question))
    got = sorted(v for s in shards for _, _, v in math_answers.find_numbers(s))
    assert got == want, (rec.line, rec.question, shards)
    counts[min(len(shards), 5)] += 1
  assert counts[1] < 50 and counts[3] + counts[4] + counts[5] > 0.85 * sum(counts.values()), counts


@needs_gsm8k
def test_gsm8k_sharded_task():
  task = underspecified.GSM8KShardedTask(min_shards=3)
  problems = task.problems("eval")
  plain = {p.id: p for p in gsm8k.GSM8KTask().problems("eval")}
  assert 0.8 * len(plain) < len(problems) <= len(plain)
  for p in problems:
    assert len(p.shards) >= 3 and p.statement == p.shards[0] and p.underspecified
    assert p.answer == plain[p.id].answer and p.meta["question"] == plain[p.id].statement
    assert plain[p.id].statement in p.privileged
  assert [p.id for p in task.problems("eval", limit=10)] == [p.id for p in problems[:10]]
  with pytest.raises(ValueError, match="min_shards"):
    underspecified.GSM8KShardedTask(min_shards=1)


def test_is_premature():
  p = underspecified.read_lic_math(FIXTURE, strict=False)[0]
  n = len(p.shards)
  assert underspecified.is_premature(p, 1, attempted=True)
  assert underspecified.is_premature(p, n - 1, attempted=True)
  assert not underspecified.is_premature(p, n, attempted=True)
  assert not underspecified.is_premature(p, 1, attempted=False)
  plain = Problem(id="x", task="gsm8k", domain="math", statement="s", privileged="", answer="1")
  assert not underspecified.is_premature(plain, 1, attempted=True)  # fully specified


def test_lic_loader_strict_names_the_malformed_item():
  with pytest.raises(ValueError, match=r"item 3 \(task_id='sharded-GSM8K/fixture-4-malformed'\)"):
    underspecified.read_lic_math(FIXTURE)


def test_lic_loader_skips_non_math_and_malformed(caplog):
  with caplog.at_level(logging.INFO, logger="sml_jax.tasks.underspecified"):
    problems = underspecified.read_lic_math(FIXTURE, strict=False)
  assert [p.id for p in problems] == ["sharded-GSM8K/fixture-1", "sharded-GSM8K/fixture-3"]
  assert "skipped 2 non-math items {'code': 1, 'database': 1} and 1 malformed" in caplog.text
  first, second = problems
  assert first.answer == "7" and len(first.shards) == 4 and first.statement == first.shards[0]
  assert "<<" not in first.privileged and "Final answer: 7" in first.privileged
  # shards come back ordered by shard_id
  assert second.shards == ("How much money does the group of friends spend in total?",
                           "There are 4 friends and each ticket costs $12.",
                           "They also buy one snack for $9 to share.")
  task = get_task("lic_math", path=FIXTURE, strict=False)
  assert task.problems("eval") == problems
  assert task.verify(second, "4 * 12 + 9 = 57. Final answer: 57").correct
  assert task.verify(second, "4 * 12 + 9 = 57").format_failure  # no anchor: not rewarded
  assert not task.verify(second, "How much is a ticket?").attempted
  assert task.leaked(second, "So they spend 57 dollars.")
  assert not task.leaked(second, "Each ticket costs $12.")
  with pytest.raises(ValueError, match="split"):
    task.problems("train")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"task_id": "a"}', "expected a JSON list"),
    ('[{"task": "math", "shards": []}]', "task_id"),
    ('[{"task_id": "a", "task": "math", "shards": [], "answer": "#### 1"}]', "non-empty list"),
    ('[{"task_id": "a", "task": "math", "shards": [{"shard_id": 1}], "answer": "#### 1"}]',
     "shard_text"),
    ('[{"task_id": "a", "task": "math", "answer": "#### 1", "shards": '
     '[{"shard_id": 1, "shard_text": "x"}, {"shard_id": 1, "shard_text": "y"}]}]', "duplicate"),
    ('[{"task_id": "a", "task": "math", "shards": [{"shard_id": 1, "shard_text": "x"}]}]',
     "no 'answer'"),
])
def test_lic_loader_errors(tmp_path, content, message):
  path = tmp_path / "lic.json"
  path.write_text(content)
  with pytest.raises(ValueError, match=message):
    underspecified.read_lic_math(str(path))


def test_lic_loader_accepts_legacy_shard_key_and_plain_answers(tmp_path):
  path = tmp_path / "lic.json"
  path.write_text(json.dumps([{"task_id": "m1", "task": "math", "answer": "1,200",
                               "shards": [{"shard_id": 2, "shard": "He has 1,000 and earns 200."},
                                          {"shard_id": 1, "shard": "How much does he have?"}]}]))
  (p,) = underspecified.read_lic_math(str(path))
  assert p.answer == "1200" and p.shards[0] == "How much does he have?"
  assert p.meta["question"] == "How much does he have? He has 1,000 and earns 200."
  with pytest.raises(FileNotFoundError):
    underspecified.read_lic_math(str(tmp_path / "missing.json"))


def test_concat_shards():
  p = underspecified.read_lic_math(FIXTURE, strict=False)[1]
  assert underspecified.concat_shards(p) == (
      "There are 4 friends and each ticket costs $12. They also buy one snack for $9 to share. "
      "How much money does the group of friends spend in total?")
  assert underspecified.concat_shards(p, 1) == p.shards[0]
