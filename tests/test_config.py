"""`config.to_spec`: the one ConfigDict -> RunSpec boundary; every bad field fails naming it."""

import pytest

from configs import tiny_test
from sml_jax import config as config_lib
from sml_jax import spec as spec_lib


def _spec(**overrides):
  c = tiny_test.get_config()
  c.update_from_flattened_dict(overrides)
  return config_lib.to_spec(c)


def test_tiny_config_becomes_a_typed_spec():
  s = _spec()
  assert [st.kind for st in s.stages] == ["eval", "sft", "qprime_sft", "rl", "eval"]
  rl = s.stages[3]
  assert isinstance(rl, spec_lib.TrainStageSpec) and rl.group_size == 2
  assert rl.train == spec_lib.TrainSettings(learning_rate=1e-3)   # NLL, 1 inner step, no KL
  assert rl.curriculum == (spec_lib.TaskEntry("arithmetic", 1.0, {"difficulty": 0}),)
  assert s.dialogue.top_p is None and s.dialogue.top_k is None    # sentinels -> None
  assert s.training_steps == 2 + 2 + 3
  assert isinstance(s.stages[0], spec_lib.EvalSpec) and s.stages[0].tasks[0].name == "arithmetic"


def test_the_demo_s_format_penalty_reaches_the_rl_stage_and_its_examples():
  """configs/demo.py's rl.format_penalty is in the RL stage's spec, and RLStage.to_examples uses
  it: a group whose dialogues all failed, one with a malformed turn, carries a signal."""
  from configs import demo
  from sml_jax.stages import rollout
  from tests.test_rollouts import MATH, _conversation
  rl = config_lib.to_spec(demo.get_config()).stages[1]
  assert rl.kind == "rl" and rl.format_penalty == 0.3
  assert _spec().stages[3].format_penalty == 0.0        # the paper's reward by default
  group = [_conversation(MATH, [(3, {"well_formed": k > 0})]) for k in range(rl.group_size)]
  assert len(rollout.RLStage(rl).to_examples(group)) == rl.group_size
  assert rollout.RLStage(_spec().stages[3]).to_examples(group[:2]) == []


def test_the_word_problem_config_is_the_demo_on_train_split_gsm_symbolic(tokenizer):
  """configs/word_problems_rl.py: the demo's dialogue and RL settings, trained on gsm_symbolic's
  train split and evaluated on its held-out eval split (disjoint generator seeds), with the cache
  its ~900-token openings need: the longest opening of the 96 eval problems (demos included, real
  tokenizer) plus 4 full student turns and 3 full teacher replies fits the cache."""
  import dataclasses
  from configs import demo, word_problems_rl
  from sml_jax.dialogue import party, prompts
  from sml_jax.dialogue.conversation import opening_segment
  from sml_jax.tasks import registry
  s, d = (config_lib.to_spec(m.get_config()) for m in (word_problems_rl, demo))
  assert [st.kind for st in s.stages] == ["eval", "rl", "eval"]
  rl, before, after = s.stages[1], s.stages[0], s.stages[2]
  assert rl.curriculum == (spec_lib.TaskEntry("gsm_symbolic", 1.0, {}),)
  assert (rl.group_size, rl.format_penalty, rl.train) == (8, 0.3, d.stages[1].train)
  assert s.dialogue == dataclasses.replace(d.dialogue, student_max_tokens=64)
  for ev in (before, after):
    assert ev.tasks == (spec_lib.TaskEntry("gsm_symbolic", 1.0, {}),)
    assert (ev.split, ev.num_problems, ev.teacher, ev.temperature) == ("eval", 96, "hint", 0.0)
  assert (s.cache_length, s.train.max_len) == (1536, 1344)
  problems = registry.get_task("gsm_symbolic").problems("eval", limit=after.num_problems)
  opening = max(len(opening_segment(tokenizer, prompts.student_opening(p),
                                    prompts.student_demos(p, teacher="hint"))[0]) for p in problems)
  d = s.dialogue
  longest = opening + d.max_turns * d.student_max_tokens + (d.max_turns - 1) * (
      d.teacher_max_tokens + party.reply_template_tokens(tokenizer))
  assert 900 < opening and longest <= s.cache_length, (opening, longest)   # Dec 7: 983, 1,365


def test_each_stage_owns_its_settings():
  s = _spec(**{"rl.inner_steps": 2, "rl.kl_beta": 0.1, "sft.kl_beta": 0.05})
  sft, qprime, rl = s.stages[1:4]
  assert rl.train.loss == "ppo" and rl.train.inner_steps == 2 and rl.train.kl_beta == 0.1
  assert sft.train.loss == "nll" and sft.train.inner_steps == 1 and sft.train.kl_beta == 0.05
  assert qprime.train.loss == "nll" and qprime.train.kl_beta == 0.0   # rl.kl_beta stays in rl


@pytest.mark.parametrize("overrides, message", [
    ({"rl.inner_steps": 0}, "config.rl.inner_steps: must be >= 1"),
    ({"rl.clip_eps": 1.5}, "config.rl.clip_eps"),
    ({"rl.kl_beta": -1.0}, "config.rl.kl_beta"),
    ({"sft.kl_beta": -1.0}, "config.sft.kl_beta"),
    ({"rl.eps": 0.0}, "config.rl.eps"),
    ({"rl.format_penalty": -0.1}, "config.rl.format_penalty"),
    ({"rl.format_penalty": float("inf")}, "config.rl.format_penalty"),
    ({"rl.group_size": 1}, "config.rl.group_size"),
    ({"qprime_sft.steps": -1}, "config.qprime_sft.steps"),
    ({"qprime_sft.rollouts_per_problem": 0}, "config.qprime_sft.rollouts_per_problem"),
    ({"sft.problems_per_step": 0}, "config.sft.problems_per_step"),
    ({"sft.warmup_steps": -2}, "config.sft.warmup_steps"),
    ({"rl.learning_rate": 0.0}, "config.rl.learning_rate"),
    ({"rl.curriculum": "chemistry"}, "config.rl.curriculum: unknown curriculum 'chemistry'"),
    ({"stages": "eval,warmup"}, "config.stages: unknown stage 'warmup'"),
    ({"stages": " , "}, "config.stages: is empty"),
    ({"eval.tasks": "algebra"}, "config.eval.tasks: unknown task 'algebra'"),
    ({"eval.teacher": "oracle"}, "config.eval.teacher"),
    ({"eval.batch_size": 0}, "config.eval.batch_size"),
    ({"dialogue.teacher": "oracle"}, "config.dialogue.teacher"),
    ({"dialogue.max_turns": 0}, "config.dialogue.max_turns"),
    ({"dialogue.top_p": 0.0}, "config.dialogue.top_p"),
    ({"dialogue.top_k": -1}, "config.dialogue.top_k"),
    ({"optimizer.schedule": "step"}, "config.optimizer.schedule"),
    ({"optimizer.b2": 1.0}, "config.optimizer.b2"),
    ({"train.micro_batch_size": 0}, "config.train.micro_batch_size"),
    ({"train.log_every": 0}, "config.train.log_every"),
    ({"compute_dtype": "float16"}, "config.compute_dtype"),
    ({"model": "gemma9"}, "config.model"),
    ({"teacher.model": "gemma9"}, "config.teacher.model"),
])
def test_bad_setting_fails_naming_the_field(overrides, message):
  with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
    _spec(**overrides)


def test_deprecated_clip_norm_still_works_with_a_warning(capsys):
  s = _spec(**{"optimizer.clip_norm": 0.5})
  assert s.optimizer.grad_clip_norm == 0.5
  assert "config.optimizer.clip_norm is deprecated; use config.optimizer.grad_clip_norm" in (
      capsys.readouterr().err)


def test_share_prefix_is_on_by_default_and_can_be_turned_off():
  assert _spec().train.share_prefix is True
  assert _spec(**{"train.share_prefix": False}).train.share_prefix is False
  assert _spec().train.share_group_prefix is True
  assert _spec(**{"train.share_group_prefix": False}).train.share_group_prefix is False
  with pytest.raises(TypeError):
    _spec(**{"train.share_group_prefix": "no"})
  with pytest.raises(TypeError):
    _spec(**{"train.share_prefix": "no"})
