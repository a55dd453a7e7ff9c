"""One arm of the CPU-scale study (issue 17): `--config=configs/study/arm.py:<arm>,<scale>`.

    python -m sml_jax.main --config=configs/study/arm.py:online_sml,full --workdir=DIR/online_sml/seed0 \
        --config.seed=0

Builds on configs/demo.py: the hint teacher, the strict reward (without the demo's later
rl.format_penalty: the arms train on the paper's binary reward), rollouts at temperature 0.7 over
the 40 likeliest tokens, LoRA, one-line student turns, training dialogues of at most 4 student
turns. The run trains only (stages from `sml_jax.study.scales.ARMS`); the study exports its LoRA
adapter and evaluates it with configs/eval.py (`python -m sml_jax.study`). Arms:

  offline_sml        rejection-sampled SFT on successful dialogues (`offline_sml`), as many
                     rollouts as online_sml: rl_steps x problems_per_step x group_size
  online_sml         GRPO, groups of 8, gamma 0.7 (`rl`)
  qprime_online_sml  Q-priming SFT (`qprime_sft`, template-written questions: the 270M cannot
                     write them) then the same `rl` as online_sml
  code_online_sml    `rl` on the generated easy_code family (transfer code -> math)

Sizes (steps, problems, model) come from the scale: smoke (tiny model, tests), pilot, full.
"""
from sml_jax.config import base_config
from sml_jax.study import scales


def get_config(arm_and_scale: str = "online_sml,full"):
  arm_name, _, scale_name = arm_and_scale.partition(",")
  arm, s = scales.get_arm(arm_name.strip()), scales.get_scale(scale_name.strip() or "full")
  if not arm.stages:
    raise ValueError(f"arm {arm.name!r} trains nothing: evaluate the base model with configs/eval.py")
  c = base_config()
  c.model = s.model
  c.lora_rank = s.lora_rank
  c.compute_dtype = s.compute_dtype
  c.sampler.cache_length = s.cache_length
  stages = ("sft",) * bool(s.warm_sft_steps) + arm.stages
  c.stages = ",".join(stages)
  c.curricula.math = s.math_curriculum
  c.curricula.code = s.code_curriculum
  code = arm.curriculum == "code"
  c.dialogue.update({
      "max_turns": s.max_turns, "teacher": "hint", "temperature": s.temperature, "top_k": s.top_k,
      "student_max_tokens": s.code_student_max_tokens if code else s.student_max_tokens,
      "teacher_max_tokens": 2 * s.teacher_max_tokens if code else s.teacher_max_tokens,
      "student_line_stop": not code, "qprime_q": 0.75, "qprime_writer": "template"})
  c.train.update({"max_len": s.max_len, "micro_batch_size": s.micro_batch_size,
                  "checkpoint_every": 1})
  c.optimizer.schedule = "constant"    # few steps: a cosine would spend them decaying
  c.sft.update({"steps": s.warm_sft_steps, "learning_rate": s.learning_rate,
                "problems_per_step": s.problems_per_step, "curriculum": arm.curriculum})
  c.offline_sml.update({"steps": s.rl_steps, "learning_rate": s.learning_rate,
                        "problems_per_step": s.problems_per_step,
                        "rollouts_per_problem": s.group_size, "curriculum": arm.curriculum})
  c.qprime_sft.update({"steps": s.qprime_steps, "learning_rate": s.learning_rate,
                       "problems_per_step": s.problems_per_step,
                       "rollouts_per_problem": s.group_size, "curriculum": arm.curriculum})
  c.rl.update({"steps": s.rl_steps, "learning_rate": s.learning_rate,
               "problems_per_step": s.problems_per_step, "group_size": s.group_size,
               "curriculum": arm.curriculum})
  return c
