"""Config defaults and validation shared by every experiment file in `configs/`.

An experiment is `configs/<name>.py` whose `get_config()` starts from `base_config()` and changes
what it needs; any field can be overridden on the command line (`--config.rl.steps=10`).
Stages run in order: `config.stages = "eval_before,qprime_sft,rl,eval_after"`; each stage kind
has its own section (`config.sft`, `config.qprime_sft`, `config.rl`, `config.eval`).
Paper defaults (arXiv:2602.16488, from summaries: treat as defaults, not truths): 4 student turns
in training, 10 at evaluation, gamma 0.7, GRPO groups of 8, no KL, Q-priming q = 0.75.
"""

from __future__ import annotations

import ml_collections

STAGE_KINDS = ("sft", "offline_sml", "qprime_sft", "rl", "eval")


def curriculum(*items: tuple[str, float, dict] | tuple[str, float]) -> str:
  """("arithmetic", 1.0, {"difficulty": 0}), ... -> "arithmetic:1.0:difficulty=0,..." (a string,
  so that `--config.curricula.math=gsm8k:0.5,mbpp:0.5` overrides it on the command line)."""
  parts = []
  for it in items:
    name, weight, kwargs = (*it, {}) if len(it) == 2 else it
    kw = ";".join(f"{k}={v}" for k, v in dict(kwargs).items())
    parts.append(f"{name}:{float(weight)}" + (f":{kw}" if kw else ""))
  return ",".join(parts)


def _value(text: str):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(text.lower(), text)


def parse_curriculum(spec: str, field: str = "curriculum") -> list[tuple[str, float, dict]]:
  """"gsm8k:0.5,arithmetic:0.5:difficulty=1;..." -> [(task, weight, kwargs), ...]."""
  out = []
  for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
    bits = part.split(":")
    if len(bits) > 3:
      raise ValueError(f"config.{field}: bad entry {part!r}; expected task[:weight[:k=v;k=v]]")
    try:
      weight = float(bits[1]) if len(bits) > 1 and bits[1] else 1.0
    except ValueError:
      raise ValueError(f"config.{field}: weight of {bits[0]!r} is not a number: {bits[1]!r}") from None
    kwargs = {}
    for kv in (bits[2].split(";") if len(bits) > 2 and bits[2] else []):
      if "=" not in kv:
        raise ValueError(f"config.{field}: bad task argument {kv!r} in {part!r}; expected key=value")
      k, v = kv.split("=", 1)
      kwargs[k.strip()] = _value(v.strip())
    out.append((bits[0].strip(), weight, kwargs))
  if not out:
    raise ValueError(f"config.{field} is empty.")
  return out


def _stage(kind: str, steps: int, lr: float, curriculum_name: str, problems_per_step: int):
  return ml_collections.ConfigDict({
      "kind": kind, "steps": steps, "learning_rate": lr, "curriculum": curriculum_name,
      "problems_per_step": problems_per_step, "warmup_steps": 0,
  })


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "gemma3_270m"
  c.checkpoint = ml_collections.FieldReference(None, field_type=str)  # None: embedded 270M
  c.tokenizer_path = ml_collections.FieldReference(None, field_type=str)
  c.lora_rank = 0                   # 0: full finetune
  c.param_dtype = "float32"         # master params / optimizer state
  c.compute_dtype = "bfloat16"      # sampling and forward/backward
  c.seed = 0
  c.stages = "eval_before,rl,eval_after"

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.sampler = ml_collections.ConfigDict({"cache_length": 2048})

  # The teacher: None model = a frozen copy of the student's initial weights.
  c.teacher = ml_collections.ConfigDict({
      "model": ml_collections.FieldReference(None, field_type=str),
      "checkpoint": ml_collections.FieldReference(None, field_type=str),
  })
  c.dialogue = ml_collections.ConfigDict({
      "max_turns": 4, "gamma": 0.7, "teacher": "llm", "student_max_tokens": 256,
      "teacher_max_tokens": 96, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
      "teacher_temperature": 0.0, "leak_policy": "redact", "qprime_q": 0.75, "qprime_max_tokens": 64,
      "fewshot": True,
  })
  c.curricula = ml_collections.ConfigDict({
      "math": curriculum(("gsm8k", 1.0)),
      "code": curriculum(("mbpp", 1.0)),
      "mixed": curriculum(("gsm8k", 0.5), ("mbpp", 0.5)),
  })
  c.optimizer = ml_collections.ConfigDict({
      "b1": 0.9, "b2": 0.99, "weight_decay": 0.0, "clip_norm": 1.0, "schedule": "cosine",
  })
  c.train = ml_collections.ConfigDict({
      "max_len": 2048,              # tokens per training sequence (longer dialogues are cut)
      "micro_batch_size": 8,        # sequences per micro-batch (gradient accumulation)
      "checkpoint_every": 10, "keep_checkpoints": 2, "log_every": 1,
  })
  c.sft = _stage("sft", 100, 1e-5, "math", 64)
  c.offline_sml = _stage("offline_sml", 50, 1e-5, "math", 64)
  c.offline_sml.rollouts_per_problem = 4
  c.qprime_sft = _stage("qprime_sft", 50, 1e-5, "math", 64)
  c.qprime_sft.rollouts_per_problem = 1
  c.rl = _stage("rl", 200, 1e-6, "math", 8)
  c.rl.group_size = 8               # conversations per problem (GRPO group)
  c.rl.eps = 1e-6                   # advantage = (r - mean) / (std + eps)
  c.rl.clip_eps = 0.2               # PPO ratio clip (only matters with rl.inner_steps > 1)
  c.rl.inner_steps = 1              # optimizer steps per batch of rollouts (1: exactly on-policy)
  c.rl.kl_beta = 0.0                # KL to the frozen initial policy
  c.eval = ml_collections.ConfigDict({
      "kind": "eval", "tasks": "gsm8k", "num_problems": 200, "split": "eval", "max_turns": 10,
      "teacher": "llm", "repeats": 1, "temperature": 0.0,
      "batch_size": 32,             # conversations sampled together (x repeats)
  })
  return c


def stage_list(config) -> list[tuple[str, str]]:
  """"eval_before,rl" -> [("eval_before", "eval"), ("rl", "rl")]: (stage name, kind)."""
  out = []
  for name in [s.strip() for s in config.stages.split(",") if s.strip()]:
    kind = "eval" if name.startswith("eval") else name
    if kind not in STAGE_KINDS:
      raise ValueError(f"config.stages: unknown stage {name!r}; known kinds: {', '.join(STAGE_KINDS)} "
                       "(eval stages may be named eval_<anything>).")
    out.append((name, kind))
  if not out:
    raise ValueError("config.stages is empty.")
  return out


def validate(config) -> None:
  """Fails at start, naming the field, instead of deep inside a run."""
  from sml_jax.models import registry  # pylint: disable=g-import-not-at-top
  from sml_jax.tasks import registry as task_registry  # pylint: disable=g-import-not-at-top

  def need(cond, field, msg):
    if not cond:
      raise ValueError(f"config.{field}: {msg}")

  try:
    registry.check_model_name(config.model)
  except ValueError as e:
    raise ValueError(f"config.model: {e}") from None
  need(config.lora_rank >= 0, "lora_rank", f"must be >= 0, got {config.lora_rank}")
  need(config.sampler.cache_length > 0, "sampler.cache_length", "must be positive")
  for name, kind in stage_list(config):
    if kind == "eval":
      for t in [t.strip() for t in config.eval.tasks.split(",") if t.strip()]:
        need(t in task_registry.TASK_NAMES, "eval.tasks",
             f"unknown task {t!r}; known: {', '.join(task_registry.TASK_NAMES)}")
      continue
    st = config[kind]
    need(st.steps >= 0, f"{kind}.steps", f"must be >= 0, got {st.steps}")
    need(st.learning_rate > 0, f"{kind}.learning_rate", f"must be positive, got {st.learning_rate}")
    need(st.curriculum in config.curricula, f"{kind}.curriculum",
         f"unknown curriculum {st.curriculum!r}; defined: {', '.join(config.curricula.keys())}")
    for task, weight, _ in parse_curriculum(config.curricula[st.curriculum],
                                            f"curricula.{st.curriculum}"):
      need(task in task_registry.TASK_NAMES, f"curricula.{st.curriculum}",
           f"unknown task {task!r}; known: {', '.join(task_registry.TASK_NAMES)}")
      need(weight >= 0, f"curricula.{st.curriculum}", f"weight of {task!r} must be >= 0")
    if kind == "rl":
      need(st.group_size >= 2, "rl.group_size",
           f"GRPO needs a group of at least 2 conversations per problem, got {st.group_size}")
  need(config.dialogue.max_turns >= 1, "dialogue.max_turns", "must be >= 1")
  need(0 < config.dialogue.gamma <= 1, "dialogue.gamma", "must be in (0, 1]")
