"""Config defaults, and the one boundary from the ConfigDict to the typed `RunSpec`.

An experiment is `configs/<name>.py` whose `get_config()` starts from `base_config()` and changes
what it needs; any field can be overridden on the command line (`--config.rl.steps=10`).
Stages run in order: `config.stages = "eval_before,qprime_sft,rl,eval_after"`; each stage kind
has its own section (`config.sft`, `config.qprime_sft`, `config.rl`, `config.eval`) holding its
own training settings (learning rate, warmup, KL; PPO inner steps for rl).

`to_spec(config)` validates every field once, naming it (`config.rl.inner_steps: ...`), and
returns the frozen `spec.RunSpec` that everything below the CLI reads.
Paper defaults (arXiv:2602.16488, from summaries: treat as defaults, not truths): 4 student turns
in training, 10 at evaluation, gamma 0.7, GRPO groups of 8, no KL, Q-priming q = 0.75.
"""

from __future__ import annotations

import sys

import ml_collections

from sml_jax import spec as spec_lib
from sml_jax.dialogue import episode
from sml_jax.dialogue.episode import DialogueConfig
from sml_jax.models import adapters
from sml_jax.models import registry as model_registry
from sml_jax.tasks import registry as task_registry
from sml_jax.training.remat import POLICIES as REMAT_POLICIES

STAGE_KINDS = spec_lib.STAGE_KINDS


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
      "kl_beta": 0.0,               # KL to the frozen initial policy (this stage only)
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
  # cache_dtype: the KV cache's dtype, "" = compute_dtype; "bfloat16" under float32 compute
  # halves the cache (keys / values rounded once when written; attention still in float32).
  # live_rows_min_batch: on a CPU, a turn of at least this many rows goes on with the rows still
  # running alone as the others stop (same rows, rounded in a smaller batch; 0 = never).
  c.sampler = ml_collections.ConfigDict({"cache_length": 2048, "cache_dtype": "",
                                         "live_rows_min_batch": 16})

  # The teacher: None model = a frozen copy of the student's initial weights.
  c.teacher = ml_collections.ConfigDict({
      "model": ml_collections.FieldReference(None, field_type=str),
      "checkpoint": ml_collections.FieldReference(None, field_type=str),
  })
  c.dialogue = ml_collections.ConfigDict({
      "max_turns": 4, "gamma": 0.7, "teacher": "llm", "student_max_tokens": 256,
      "teacher_max_tokens": 96, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
      "teacher_temperature": 0.0, "teacher_top_k": 0, "leak_policy": "redact", "qprime_q": 0.75,
      "qprime_max_tokens": 64, "qprime_writer": "model", "fewshot": True,
      "student_line_stop": False,   # student turns end at their first line break
  })
  c.curricula = ml_collections.ConfigDict({
      "math": curriculum(("gsm8k", 1.0)),
      "code": curriculum(("mbpp", 1.0)),
      "mixed": curriculum(("gsm8k", 0.5), ("mbpp", 0.5)),
  })
  c.optimizer = ml_collections.ConfigDict({
      "b1": 0.9, "b2": 0.99, "weight_decay": 0.0, "grad_clip_norm": 1.0,
      "schedule": "cosine",         # "cosine" (warmup, then cosine to 10%) | "constant"
      # Deprecated spelling of grad_clip_norm (still read, with a warning).
      "clip_norm": ml_collections.FieldReference(None, field_type=float),
  })
  c.train = ml_collections.ConfigDict({
      "max_len": 2048,              # tokens per training sequence (longer dialogues are cut)
      "micro_batch_size": 8,        # sequences per micro-batch (gradient accumulation)
      "checkpoint_every": 10, "keep_checkpoints": 2,
      "log_every": 1,               # a progress line on the console every this many steps
      "remat": "none",              # per-layer rematerialization: none | full | dots (remat.py)
      # The leading tokens every conversation of a train batch shares (instructions,
      # demonstrations) are forwarded once per train step, not once per row (exact;
      # training/shared_prefix.py).
      "share_prefix": True,
      # With it, the span the conversations of one group share after that prefix (a GRPO
      # group's problem statement) is stored once per row, not once per conversation (exact;
      # packing.group_spans).
      "share_group_prefix": True,
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
  c.rl.kl_beta = 0.0                # KL to the frozen initial policy (rl only)
  # Subtracted from a conversation's reward in proportion to its student turns that are not
  # well-formed (no answer anchor and not a question; mixed script): see stages/examples.py.
  c.rl.format_penalty = 0.0
  c.eval = ml_collections.ConfigDict({
      "kind": "eval",
      "tasks": "gsm8k",             # comma-separated tasks, or curriculum entries (task:1:k=v)
      # num_problems: per task; 0 = every problem of the split
      "num_problems": 200, "split": "eval", "max_turns": 10,
      "teacher": "llm", "repeats": 1, "temperature": 0.0,
      "batch_size": 32,             # conversations sampled together (x repeats)
  })
  return c




# --- ConfigDict -> RunSpec ------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16")


def _need(cond: bool, field: str, msg: str) -> None:
  if not cond:
    raise ValueError(f"config.{field}: {msg}")


def stage_names(config) -> list[tuple[str, str]]:
  """"eval_before,rl" -> [("eval_before", "eval"), ("rl", "rl")]: (stage name, kind)."""
  out = []
  for name in [s.strip() for s in str(config.stages).split(",") if s.strip()]:
    kind = "eval" if name.startswith("eval") else name
    _need(kind in STAGE_KINDS, "stages",
          f"unknown stage {name!r}; known kinds: {', '.join(STAGE_KINDS)} "
          "(eval stages may be named eval_<anything>).")
    out.append((name, kind))
  _need(bool(out), "stages", "is empty.")
  return out


def _entries(text: str, field: str) -> tuple[spec_lib.TaskEntry, ...]:
  out = []
  for task, weight, kwargs in parse_curriculum(text, field):
    _need(task in task_registry.TASK_NAMES, field,
          f"unknown task {task!r}; known: {', '.join(task_registry.TASK_NAMES)}")
    _need(weight >= 0, field, f"weight of {task!r} must be >= 0")
    out.append(spec_lib.TaskEntry(task, weight, kwargs))
  return tuple(out)


def _train_settings(st, kind: str, temperature: float = 1.0,
                    truncated: bool = False) -> spec_lib.TrainSettings:
  """`temperature` / `truncated`: how rl's rollouts are sampled (dialogue.temperature; top-k or
  top-p set); greedy rollouts (temperature 0) are scored at temperature 1."""
  _need(st.learning_rate > 0, f"{kind}.learning_rate", f"must be positive, got {st.learning_rate}")
  _need(st.warmup_steps >= 0, f"{kind}.warmup_steps", f"must be >= 0, got {st.warmup_steps}")
  _need(st.kl_beta >= 0, f"{kind}.kl_beta", f"must be >= 0, got {st.kl_beta}")
  if kind != "rl":  # SFT stages: plain NLL, one update per batch.
    return spec_lib.TrainSettings(learning_rate=st.learning_rate, warmup_steps=st.warmup_steps,
                                  kl_beta=st.kl_beta)
  _need(st.inner_steps >= 1, "rl.inner_steps",
        f"must be >= 1 (optimizer steps per batch of rollouts), got {st.inner_steps}")
  _need(0 < st.clip_eps < 1, "rl.clip_eps", f"must be in (0, 1), got {st.clip_eps}")
  return spec_lib.TrainSettings(
      learning_rate=st.learning_rate, warmup_steps=st.warmup_steps, kl_beta=st.kl_beta,
      loss="ppo" if st.inner_steps > 1 else "nll", inner_steps=st.inner_steps,
      clip_eps=st.clip_eps, temperature=temperature or 1.0,
      recompute_old_logprobs=st.inner_steps > 1 and truncated)


def train_stage_spec(config, name: str, kind: str) -> spec_lib.TrainStageSpec:
  st = config[kind]
  _need(st.steps >= 0, f"{kind}.steps", f"must be >= 0, got {st.steps}")
  _need(st.problems_per_step >= 1, f"{kind}.problems_per_step",
        f"must be >= 1, got {st.problems_per_step}")
  _need(st.curriculum in config.curricula, f"{kind}.curriculum",
        f"unknown curriculum {st.curriculum!r}; defined: {', '.join(config.curricula.keys())}")
  extra = {}
  if "rollouts_per_problem" in st:
    _need(st.rollouts_per_problem >= 1, f"{kind}.rollouts_per_problem",
          f"must be >= 1, got {st.rollouts_per_problem}")
    extra["rollouts_per_problem"] = st.rollouts_per_problem
  if kind == "rl":
    _need(st.group_size >= 2, "rl.group_size",
          f"GRPO needs a group of at least 2 conversations per problem, got {st.group_size}")
    _need(st.eps > 0, "rl.eps", f"must be > 0, got {st.eps}")
    _need(0 <= st.format_penalty < float("inf"), "rl.format_penalty",
          f"must be a finite number >= 0, got {st.format_penalty}")
    extra.update(group_size=st.group_size, adv_eps=st.eps, format_penalty=st.format_penalty)
  return spec_lib.TrainStageSpec(
      name=name, kind=kind, steps=st.steps,
      curriculum=_entries(config.curricula[st.curriculum], f"curricula.{st.curriculum}"),
      problems_per_step=st.problems_per_step, train=_train_settings(
          st, kind, temperature=config.dialogue.temperature,
          truncated=bool(config.dialogue.top_k) or config.dialogue.top_p < 1.0), **extra)


def _eval_stage(config, name: str) -> spec_lib.EvalSpec:
  ev = config.eval
  _need(ev.num_problems >= 0, "eval.num_problems", f"must be >= 0 (0: all), got {ev.num_problems}")
  for field in ("max_turns", "repeats", "batch_size"):
    _need(ev[field] >= 1, f"eval.{field}", f"must be >= 1, got {ev[field]}")
  _need(ev.temperature >= 0, "eval.temperature", f"must be >= 0, got {ev.temperature}")
  _need(ev.teacher in episode.TEACHER_KINDS, "eval.teacher",
        f"unknown teacher {ev.teacher!r}; known: {', '.join(episode.TEACHER_KINDS)}")
  return spec_lib.EvalSpec(
      name=name, tasks=_entries(ev.tasks, "eval.tasks"), num_problems=ev.num_problems,
      split=ev.split, max_turns=ev.max_turns, teacher=ev.teacher, repeats=ev.repeats,
      temperature=float(ev.temperature), batch_size=int(ev.batch_size))


def _dialogue(config) -> DialogueConfig:
  d = dict(config.dialogue)
  _need(0 < d["top_p"] <= 1, "dialogue.top_p", f"must be in (0, 1], got {d['top_p']}")
  for field in ("top_k", "teacher_top_k"):
    _need(d[field] >= 0, f"dialogue.{field}", f"must be >= 0, got {d[field]}")
  for field in ("student_max_tokens", "teacher_max_tokens", "qprime_max_tokens"):
    _need(d[field] >= 1, f"dialogue.{field}", f"must be >= 1, got {d[field]}")
  for field in ("temperature", "teacher_temperature"):
    _need(d[field] >= 0, f"dialogue.{field}", f"must be >= 0, got {d[field]}")
  # The config's CLI-friendly sentinels (top_p=1.0, top_k=0: no truncation) become None.
  d["top_p"] = d["top_p"] if d["top_p"] < 1.0 else None
  d["top_k"] = d["top_k"] or None
  d["teacher_top_k"] = d["teacher_top_k"] or None
  try:
    return DialogueConfig(**d)
  except ValueError as e:  # DialogueConfig names the field as dialogue.<field>.
    raise ValueError(f"config.{e}") from None


def _optimizer(config) -> spec_lib.OptimizerSpec:
  o = config.optimizer
  clip = o.grad_clip_norm
  if o.clip_norm is not None:
    print("warning: config.optimizer.clip_norm is deprecated; use config.optimizer.grad_clip_norm "
          f"(using {o.clip_norm}).", file=sys.stderr)
    clip = o.clip_norm
  _need(clip is None or clip >= 0, "optimizer.grad_clip_norm", f"must be >= 0, got {clip}")
  for field in ("b1", "b2"):
    _need(0 <= o[field] < 1, f"optimizer.{field}", f"must be in [0, 1), got {o[field]}")
  _need(o.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}")
  _need(o.schedule in ("cosine", "constant"), "optimizer.schedule",
        f"must be 'cosine' or 'constant', got {o.schedule!r}")
  return spec_lib.OptimizerSpec(b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                                grad_clip_norm=clip or None, schedule=o.schedule)


def to_spec(config) -> spec_lib.RunSpec:
  """Validates `config` (every field, naming it) -> the typed `RunSpec`."""
  try:
    model_registry.check_model_name(config.model)
  except ValueError as e:
    raise ValueError(f"config.model: {e}") from None
  if config.teacher.model is not None:
    try:
      model_registry.check_model_name(config.teacher.model)
    except ValueError as e:
      raise ValueError(f"config.teacher.model: {e}") from None
  _need(config.lora_rank >= 0, "lora_rank", f"must be >= 0, got {config.lora_rank}")
  adapters.check_student(config.model, config.checkpoint, config.lora_rank)  # an adapter dir
  for field in ("param_dtype", "compute_dtype"):
    _need(config[field] in _DTYPES, field, f"must be one of {_DTYPES}, got {config[field]!r}")
  _need(config.sampler.cache_length > 0, "sampler.cache_length", "must be positive")
  _need(config.sampler.cache_dtype in ("", *_DTYPES), "sampler.cache_dtype",
        f"must be '' (the compute dtype) or one of {_DTYPES}, got {config.sampler.cache_dtype!r}")
  _need(config.sampler.live_rows_min_batch >= 0, "sampler.live_rows_min_batch",
        f"must be >= 0 (0: never), got {config.sampler.live_rows_min_batch}")
  tr = config.train
  _need(tr.max_len >= 2, "train.max_len", f"must be >= 2, got {tr.max_len}")
  for field in ("micro_batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
    _need(tr[field] >= 1, f"train.{field}", f"must be >= 1, got {tr[field]}")
  _need(tr.remat in REMAT_POLICIES, "train.remat",
        f"must be one of {', '.join(REMAT_POLICIES)}, got {tr.remat!r}")
  for field in ("share_prefix", "share_group_prefix"):
    _need(isinstance(tr[field], bool), f"train.{field}",
          f"must be True or False, got {tr[field]!r}")
  stages = tuple(_eval_stage(config, name) if kind == "eval" else train_stage_spec(config, name, kind)
                 for name, kind in stage_names(config))
  task_kwargs: dict[str, dict] = {}
  # Curricula the training stages use come first: their arguments win over unused curricula's.
  used = [config[kind].curriculum for _, kind in stage_names(config) if kind != "eval"]
  for name in dict.fromkeys([*used, *config.curricula.keys()]):
    for entry in _entries(config.curricula[name], f"curricula.{name}"):
      # The first curriculum entry naming a task gives its arguments (data files, difficulty,
      # sandbox limits) to every other use of the task: verification, and eval entries
      # without arguments of their own.
      task_kwargs.setdefault(entry.name, dict(entry.kwargs))
  teacher = None
  if config.teacher.model or config.teacher.checkpoint:
    teacher = spec_lib.ModelSpec(config.teacher.model or config.model, config.teacher.checkpoint)
  return spec_lib.RunSpec(
      student=spec_lib.ModelSpec(config.model, config.checkpoint), teacher=teacher,
      tokenizer_path=config.tokenizer_path, lora_rank=config.lora_rank,
      param_dtype=config.param_dtype, compute_dtype=config.compute_dtype, seed=config.seed,
      mesh=spec_lib.MeshSpec(config.mesh.data, config.mesh.fsdp, config.mesh.tensor),
      cache_length=config.sampler.cache_length, dialogue=_dialogue(config),
      optimizer=_optimizer(config),
      train=spec_lib.TrainLoopSpec(max_len=tr.max_len, micro_batch_size=tr.micro_batch_size,
                                   checkpoint_every=tr.checkpoint_every,
                                   keep_checkpoints=tr.keep_checkpoints, log_every=tr.log_every,
                                   remat=tr.remat, share_prefix=tr.share_prefix,
                                   share_group_prefix=tr.share_group_prefix),
      stages=stages, task_kwargs=task_kwargs, cache_dtype=config.sampler.cache_dtype,
      live_rows_min_batch=config.sampler.live_rows_min_batch)
