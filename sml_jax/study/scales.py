"""The study's arms, eval suites and scales: the one table its configs and commands come from.

    scale = SCALES["full"]
    ARMS["online_sml"].stages            # ("rl",): the training stages of the arm's run
    scale.suites[0]                      # EvalSuite("math", "arithmetic:1.0:difficulty=2", 200, ...)
    eval_overrides(scale, scale.suites[0])   # --config.x=y flags for configs/eval.py

`configs/study/arm.py:<arm>,<scale>` builds an arm's training config from these; every eval is
`configs/eval.py` plus `eval_overrides` (the commands in results.md are exactly what ran).

Import-light: dataclasses only (configs and the study CLI read it).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  stages: tuple[str, ...]          # training stages of its run (empty: eval only)
  curriculum: str = "math"         # the curriculum its stages train on
  description: str = ""
  # The eval suites it runs: only those its claims read (evals are most of the study's time).
  suites: tuple[str, ...] = ("math", "code", "sharded")
  # Fraction of the math suite's problems it is evaluated on: a prefix of the same list (the
  # arithmetic eval list is prefix-stable), so paired comparisons use the problems both ran.
  # Claim (a) needs n >= 200 for base and online_sml; the others compare on fewer.
  math_share: float = 1.0


ARMS = {a.name: a for a in (
    Arm("base", (), description="no training: the base model, eval only"),
    Arm("offline_sml", ("offline_sml",), suites=("math", "code"), math_share=0.5,  # b, c, d
        description="rejection-sampled SFT on the student's successful dialogues"),
    Arm("online_sml", ("rl",), description="GRPO (group 8, gamma 0.7) on turn-discounted rewards"),
    Arm("qprime_online_sml", ("qprime_sft", "rl"), suites=("math", "sharded"),   # c, e
        math_share=0.5,
        description="Q-priming SFT (failed attempts replaced by questions), then GRPO"),
    # Transfer the other way (claim (d)): trained on code, evaluated on math. Not run by default.
    Arm("code_online_sml", ("rl",), curriculum="code", suites=("math", "code"), math_share=0.5,
        description="GRPO on easy_code"),
)}
DEFAULT_ARMS = ("base", "offline_sml", "online_sml", "qprime_online_sml")


@dataclasses.dataclass(frozen=True)
class EvalSuite:
  """One eval run per (arm, seed): held-out problems of one family, greedy, hint teacher."""
  name: str                        # "math" | "code" | "sharded"
  tasks: str                       # eval.tasks (curriculum entries with their task arguments)
  num_problems: int
  max_turns: int
  student_max_tokens: int
  teacher_max_tokens: int
  cache_length: int
  line_stop: bool                  # one-line student turns (math); code needs several lines
  batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class Scale:
  """Sizes of one study: model, training budget, eval sets."""
  name: str
  model: str
  suites: tuple[EvalSuite, ...]
  rl_steps: int                    # online: rl_steps * problems_per_step * group_size dialogues
  problems_per_step: int
  group_size: int = 8              # GRPO group; offline_sml rolls out as many per problem
  qprime_steps: int = 0            # qprime_online_sml's Q-priming SFT stage before its rl
  warm_sft_steps: int = 0          # an `sft` step first (smoke only: see SMOKE)
  learning_rate: float = 1e-4
  lora_rank: int = 16
  max_turns: int = 4               # training dialogues
  student_max_tokens: int = 48
  teacher_max_tokens: int = 32
  code_student_max_tokens: int = 96
  # A 4-turn word-problem dialogue is ~1,300 tokens at most since its prompt holds the three
  # word-problem demos (prompts.WORD_PROBLEM_DEMOS: gsm_symbolic openings with up to 3 steps are
  # 891 tokens at the median, 962 at most, + 4 x 48 student tokens + 3 hint replies of ~30 +
  # turn markers; a longer one is cut in training and counted, `truncated_rate`); arithmetic
  # ones stay under 800. The committed seeds ran at 02e0d38, before those demos, with 1024/768.
  cache_length: int = 1536
  max_len: int = 1344
  micro_batch_size: int = 4
  compute_dtype: str = "float32"   # CPUs without native bf16 matmuls are faster in f32
  temperature: float = 0.7
  top_k: int = 40
  # Two-digit sums / products (level 2; the base 270M solves ~6% at turn 1, so groups vary),
  # two-digit sums and differences (level 6: solved by none in 4 turns: feedback has to carry
  # it), and 2-3 step word problems.
  math_curriculum: str = ("arithmetic:0.6:difficulty=2,arithmetic:0.2:difficulty=6,"
                          "gsm_symbolic:0.2:max_difficulty=3")
  code_curriculum: str = "easy_code:1.0"

  @property
  def rollouts_per_arm(self) -> int:
    """Dialogues sampled by each of offline_sml and online_sml (equal budgets)."""
    return self.rl_steps * self.problems_per_step * self.group_size


def _suites(n_math: int, n_code: int, n_sharded: int, turns: int = 10,
            math_tokens: int = 48, code_tokens: int = 96, teacher_tokens: int = 32,
            batch: int = 32, math_cache: int = 1536, code_cache: int = 2048
            ) -> tuple[EvalSuite, ...]:
  """Caches: ~250 tokens of demonstrations and opening + 10 turns of each party. Batches: the
  f32 KV cache of the 270M is 18 layers x 2 x 256 x 4 bytes = 36 KB per token and row (batch 32
  at 1,536 tokens: 1.8 GB); code rows are longer, so half as many."""
  return (
      EvalSuite("math", "arithmetic:1.0:difficulty=2", n_math, turns, math_tokens, teacher_tokens,
                math_cache, True, batch),
      EvalSuite("code", "easy_code:1.0", n_code, turns, code_tokens, 2 * teacher_tokens,
                code_cache, False, max(1, batch // 2)),
      EvalSuite("sharded", "gsm8k_sharded:1.0", n_sharded, turns, math_tokens, teacher_tokens,
                math_cache, True, batch),
  )


# smoke: the random-init `tiny` model, for tests of the machinery (its numbers mean nothing). The
# tiny model never solves a problem, so its rl / offline groups carry no signal: one SFT step on
# reference solutions first makes its adapter non-zero (something to export and reload).
SMOKE = Scale("smoke", "tiny", _suites(4, 3, 3, turns=2, math_tokens=8, code_tokens=8,
                                       teacher_tokens=8, batch=4, math_cache=512, code_cache=512),
              rl_steps=1, problems_per_step=2, group_size=2, qprime_steps=1, warm_sft_steps=1,
              learning_rate=1e-3, lora_rank=4, max_turns=2, student_max_tokens=8,
              teacher_max_tokens=8, code_student_max_tokens=8, cache_length=512, max_len=512)
# pilot: the real 270M, minutes: checks a study end to end before a long one.
PILOT = Scale("pilot", "gemma3_270m", _suites(16, 8, 8), rl_steps=1, problems_per_step=2,
              qprime_steps=1)
# full: ~3 h of 2 quiet CPU cores for the four default arms and one seed (estimated from a
# measured 270M eval, 8 problems x 10 turns: ~1.7 s per problem-turn at batch 8, and the demo's
# RL iteration, ~1 min sampling + ~2.5 min training for 32 dialogues): math eval ~27 min for 200
# problems (base, online_sml; 100 for the others), code (32) ~9, sharded (32) ~5; rl 5 x ~3.5
# min; offline 5 x ~1.5 min; Q-priming 1 x ~3.5 min. Each further online_sml seed adds ~60 min.
# results.md records what it really took.
FULL = Scale("full", "gemma3_270m", _suites(200, 32, 32), rl_steps=5, problems_per_step=4,
             qprime_steps=1)
SCALES = {s.name: s for s in (SMOKE, PILOT, FULL)}


def get_scale(name: str) -> Scale:
  if name not in SCALES:
    raise ValueError(f"unknown study scale {name!r}; known: {', '.join(SCALES)}")
  return SCALES[name]


def get_arm(name: str) -> Arm:
  if name not in ARMS:
    raise ValueError(f"unknown study arm {name!r}; known: {', '.join(ARMS)}")
  return ARMS[name]


def eval_overrides(scale: Scale, suite: EvalSuite) -> list[str]:
  """`--config.x=y` flags that make configs/eval.py the study's eval of `suite` (greedy; the
  problems depend on config.seed, left at 0 so that every arm sees the same ones)."""
  return [
      f"--config.model={scale.model}", f"--config.compute_dtype={scale.compute_dtype}",
      f"--config.sampler.cache_length={suite.cache_length}",
      f"--config.train.max_len={scale.max_len}",
      f"--config.dialogue.student_max_tokens={suite.student_max_tokens}",
      f"--config.dialogue.teacher_max_tokens={suite.teacher_max_tokens}",
      f"--config.dialogue.student_line_stop={suite.line_stop}",
      "--config.dialogue.teacher=hint", "--config.eval.teacher=hint",
      f"--config.eval.tasks={suite.tasks}", f"--config.eval.num_problems={suite.num_problems}",
      f"--config.eval.max_turns={suite.max_turns}", "--config.eval.split=eval",
      f"--config.eval.batch_size={suite.batch_size}",
  ]
