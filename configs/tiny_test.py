"""For tests: the random-init `tiny` model, scripted teacher, a few steps of every stage kind."""
from sml_jax.config import base_config, curriculum


def get_config():
  c = base_config()
  c.model = "tiny"
  c.compute_dtype = "float32"
  c.stages = "eval_before,sft,qprime_sft,rl,eval_after"
  c.sampler.cache_length = 512
  c.curricula.math = curriculum(("arithmetic", 1.0, {"difficulty": 0}))
  c.dialogue.update({"max_turns": 2, "student_max_tokens": 8, "teacher_max_tokens": 8,
                     "teacher": "scripted", "qprime_q": 1.0, "qprime_max_tokens": 8})
  c.train.update({"max_len": 512, "micro_batch_size": 4, "checkpoint_every": 2})
  c.sft.update({"steps": 2, "learning_rate": 1e-3, "problems_per_step": 4})
  c.qprime_sft.update({"steps": 2, "learning_rate": 1e-3, "problems_per_step": 2})
  c.offline_sml.update({"steps": 2, "learning_rate": 1e-3, "problems_per_step": 2,
                        "rollouts_per_problem": 2})
  c.rl.update({"steps": 3, "learning_rate": 1e-3, "problems_per_step": 2, "group_size": 2})
  c.eval.update({"tasks": "arithmetic", "num_problems": 4, "max_turns": 2, "teacher": "scripted"})
  return c
