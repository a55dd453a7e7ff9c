"""The suite's 8-fake-device programs, run together in ONE subprocess.

Each sharded test (sampler, train step, the (2, 4, 1) mesh and memory plan) needs a process
started with 8 fake CPU devices. Run separately they paid three jax / gemma start-ups and
compiled the tiny model three times; here one process runs every program in its own namespace,
in order, keeping each one's stdout and error apart, so one failure neither hides nor fails the
others. The programs stay in their test modules, next to their assertions.
"""

from __future__ import annotations

import json

# Reads {name: code} as JSON on stdin; prints {name: {"ok", "stdout", "error"}} as the last line.
RUNNER = r"""
import contextlib, io, json, sys, traceback
import jax
assert jax.device_count() == 8, jax.devices()
results = {}
for name, code in json.loads(sys.stdin.read()).items():
  buf = io.StringIO()
  try:
    with contextlib.redirect_stdout(buf):
      exec(compile(code, f"<{name}>", "exec"), {"__name__": "__main__"})
    results[name] = {"ok": True, "stdout": buf.getvalue(), "error": ""}
  except BaseException:  # pylint: disable=broad-except
    results[name] = {"ok": False, "stdout": buf.getvalue(), "error": traceback.format_exc()}
print(json.dumps(results))
"""


def programs() -> dict[str, str]:
  """name -> code of every 8-device program (imported here, lazily, from the test modules)."""
  from tests import test_parallel, test_sampler_sharding, test_train_step  # pylint: disable=g-import-not-at-top
  return {
      "sampler_sharding": test_sampler_sharding.CODE,
      "train_step_8_1_1_and_2_2_2": test_train_step.SHARDED_PROGRAM,
      "train_step_2_4_1_and_plan_bytes": test_parallel.EIGHT_DEVICE_PROGRAM,
  }


def run_all(run_with_devices, timeout: float = 2400) -> dict[str, dict]:
  return json.loads(run_with_devices(RUNNER, num_devices=8, timeout=timeout,
                                     stdin=json.dumps(programs())).strip().splitlines()[-1])
