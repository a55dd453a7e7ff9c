"""The `make demo` pipeline on CPU with the embedded Gemma 3 270M (about 20 minutes on 2 cores):
eval before -> Q-priming SFT -> online SML (GRPO) -> eval after -> report.

Easy generated arithmetic (the base 270M is weak at math), short turns, the frozen 270M as teacher,
LoRA to keep the CPU train step cheap. Scale any of it up with --config.x=y.
"""
from sml_jax.config import base_config, curriculum


def get_config():
  c = base_config()
  c.stages = "eval_before,qprime_sft,rl,eval_after"
  c.lora_rank = 16
  # float32 compute: CPUs without native bf16 matmuls (like the AMD Zen 3 of the CI machines)
  # run the sampler and the train step ~20% faster in f32 than in bf16 (bench figures).
  c.compute_dtype = "float32"
  c.sampler.cache_length = 768
  c.curricula.math = curriculum(("arithmetic", 1.0, {"difficulty": 0}))
  c.dialogue.update({"max_turns": 3, "student_max_tokens": 48, "teacher_max_tokens": 32,
                     "temperature": 1.0, "teacher": "llm"})
  c.train.max_len = 512
  c.train.micro_batch_size = 4      # 4 x 512 tokens per micro-batch: a few GB of activations
  c.train.checkpoint_every = 5
  c.qprime_sft.update({"steps": 2, "learning_rate": 1e-4, "problems_per_step": 8,
                       "curriculum": "math"})
  c.rl.update({"steps": 5, "learning_rate": 5e-5, "problems_per_step": 3, "group_size": 8,
               "curriculum": "math"})
  c.eval.update({"tasks": "arithmetic", "num_problems": 24, "max_turns": 3, "teacher": "llm",
                 "split": "eval"})
  return c
