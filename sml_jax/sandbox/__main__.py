"""`python -m sml_jax.sandbox FILE.py [--timeout=SECONDS]`: runs FILE in the sandbox and prints one
JSON object: {"exit_code", "stdout", "stderr", "timed_out", "duration", "truncated", "sandboxed"}.

Exit status: 0 when the program ran (whatever it did), 2 for bad arguments, 3 when the sandbox is
unavailable (bubblewrap missing) and --allow-unsafe was not given.
"""

import argparse
import json
import sys

from sml_jax import quiet
from sml_jax.sandbox import bwrap, runner


def main(argv=None) -> int:
  quiet.install()
  parser = argparse.ArgumentParser(prog="python -m sml_jax.sandbox", description=__doc__.split("\n")[0])
  parser.add_argument("file", help="python program to run")
  parser.add_argument("--timeout", type=float, default=5.0, help="wall-clock seconds (default 5)")
  parser.add_argument("--memory-mb", type=int, default=bwrap.Limits.memory_bytes >> 20,
                      help="address-space limit in MiB")
  parser.add_argument("--stdin", help="file whose contents are fed to the program's stdin")
  parser.add_argument("--allow-unsafe", action="store_true",
                      help="if bubblewrap is missing, run WITHOUT isolation instead of refusing")
  args = parser.parse_args(argv)
  if not args.timeout > 0:
    parser.error(f"--timeout must be > 0, got {args.timeout}")
  try:
    with open(args.file, encoding="utf-8") as f:
      source = f.read()
    stdin = None
    if args.stdin:
      with open(args.stdin, "rb") as f:
        stdin = f.read()
  except (OSError, UnicodeDecodeError) as e:
    parser.error(f"cannot read {e.filename or args.file}: {e}")
  try:
    limits = bwrap.Limits(memory_bytes=args.memory_mb << 20)
    result = runner.run_program(source, args.timeout, stdin=stdin, limits=limits,
                                allow_unsafe=args.allow_unsafe)
  except ValueError as e:
    parser.error(str(e))
  except runner.SandboxUnavailable as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  print(json.dumps(result.to_json()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
