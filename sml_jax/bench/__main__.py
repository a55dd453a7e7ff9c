"""`python -m sml_jax.bench {sampler,train,rl} [options]`: dispatches to the benchmark's `main(argv)`.

    python -m sml_jax.bench sampler [--json] [--full] [--batches=1,8]   # ~5 min; --full ~20 min
    python -m sml_jax.bench train [--json] [--full] ...                  # ~5 min
    python -m sml_jax.bench rl [--config=configs/demo.py] [--json]   # one RL iteration's time split
"""

import sys

from sml_jax import quiet

USAGE = "usage: python -m sml_jax.bench {sampler,train,rl} [--json] [options; --help per benchmark]"


def main(argv=None) -> int:
  quiet.install()  # Before the benchmark imports TensorFlow (through gemma).
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE)
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name == "sampler":
    from sml_jax.bench import sampler_bench  # pylint: disable=g-import-not-at-top
    sampler_bench.main(rest)
  elif name == "train":
    from sml_jax.bench import train_bench  # pylint: disable=g-import-not-at-top
    train_bench.main(rest)
  elif name == "rl":
    from sml_jax.bench import rl_bench  # pylint: disable=g-import-not-at-top
    rl_bench.main(rest)
  else:
    print(f"unknown benchmark {name!r}\n{USAGE}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
