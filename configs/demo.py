"""The `make demo` pipeline on CPU with the embedded Gemma 3 270M (~12 min on 2 cores):
eval before -> online SML (GRPO) -> eval after -> report.

What makes its dialogues mean something at this scale (the base 270M is a weak student and cannot
teach):
  * the privileged `hint` teacher: no LLM, leak-free by construction; it tells the student whether
    its answer is too high or too low and roughly by how much, and names the first step of the
    reference solution the student has not reached;
  * in-context demonstrations that show the hint teacher's feedback answered by an anchored
    attempt, with numbers of their own (`prompts.HINT_STUDENT_DEMOS`: the base model copied the
    old demos' answers);
  * the strict reward: only an anchored answer (`Final answer: N`) counts;
  * rollouts sampled at temperature 0.7 over the 40 most likely tokens (at 1.0 over the whole
    262k vocabulary a third of the base model's turns drift into mixed-script text); the train
    step scores tokens at that temperature, so GRPO stays on-policy; student turns end at their
    first line break (a one-line answer format: what the base model writes after it is noise);
  * a format penalty in the RL reward (rl.format_penalty = 0.3 x the share of malformed student
    turns): with the success reward alone, the failed conversations' negative advantage falls on
    their many "Final answer:" anchors, and after 3 steps the greedy student echoed the teacher's
    hints instead of answering (well-formed turns 0.99 -> 0.86). 0.3 < gamma^3 = 0.343, so a
    conversation solved at turn 4 still beats every unsolved one;
  * small sums, differences and products (arithmetic level 2, "What is 12 * 4?"): the base model
    solves some at once and gets others wrong, so rewards vary within a group and feedback has
    something to fix (on two-digit sums, level 6, the greedy base model solved none of 64 within
    4 turns); train and eval problems are disjoint by construction (a problem's split is a hash
    of its expression).
Q-priming is not used here: on fully specified sums there is nothing to ask (see
configs/qprime_math_rl.py for underspecified problems). Scale any of it up with --config.x=y.
"""
from sml_jax.config import base_config, curriculum


def get_config():
  c = base_config()
  c.stages = "eval_before,rl,eval_after"
  c.lora_rank = 16
  # float32 compute: CPUs without native bf16 matmuls (like the AMD Zen 3 of the CI machines)
  # run the sampler and the train step ~20% faster in f32 than in bf16 (bench figures).
  c.compute_dtype = "float32"
  c.sampler.cache_length = 1024
  c.curricula.math = curriculum(("arithmetic", 1.0, {"difficulty": 2}))
  c.dialogue.update({"max_turns": 4, "student_max_tokens": 40, "teacher_max_tokens": 32,
                     "temperature": 0.7, "top_k": 40, "teacher": "hint", "qprime_q": 0.0,
                     "student_line_stop": True})
  c.train.max_len = 768
  c.train.micro_batch_size = 4      # 4 x 768 tokens per micro-batch: a few GB of activations
  c.train.checkpoint_every = 2
  c.rl.update({"steps": 3, "learning_rate": 1e-4, "problems_per_step": 4, "group_size": 8,
               "curriculum": "math", "format_penalty": 0.3})
  c.eval.update({"tasks": "arithmetic", "num_problems": 48, "max_turns": 4, "teacher": "hint",
                 "split": "eval", "batch_size": 48})
  return c
