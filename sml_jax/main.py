r"""Runs an experiment: `python -m sml_jax.main --config=configs/<name>.py --workdir=DIR`.

flags -> `config.to_spec(config)` (the typed, validated `RunSpec`) -> `stages.driver.run`.

Stages from `config.stages` run in order (e.g. eval_before, qprime_sft, rl, eval_after). Rerunning
the same command on the same --workdir resumes from the last checkpoint. Any config field can be
overridden: `--config.rl.steps=10 --config.model=gemma3_12b --config.checkpoint=gs://...`.
"""

from __future__ import annotations

import os
import sys

from sml_jax import quiet

quiet.install()  # Before anything imports TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, evals, report.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", os.environ.get("SML_JAX_COMPILATION_CACHE") or None,
    "Persistent XLA compilation cache (local or gs://; default $SML_JAX_COMPILATION_CACHE): "
    "a restarted or preempted run, and every host of a slice, reuses the compiled programs.")
flags.mark_flags_as_required(["config", "workdir"])


def enable_compilation_cache(path: str | None) -> None:
  """Points jax's persistent compilation cache at `path` (None: off). Programs that compile in
  under a second are not worth a cache entry."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  # Imported here, not at the top: `--help` and flag errors stay fast (no jax / gemma).
  from sml_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from sml_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    spec = config_lib.to_spec(config)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  distributed.maybe_initialize()  # Multi-host (e.g. TPU pod workers); a no-op on one process.
  enable_compilation_cache(_COMPILATION_CACHE.value)
  from sml_jax.stages import driver  # pylint: disable=g-import-not-at-top
  driver.run(spec, _WORKDIR.value, config_json=config.to_json_best_effort(indent=2))


if __name__ == "__main__":
  app.run(main)
