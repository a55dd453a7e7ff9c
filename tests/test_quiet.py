"""A quiet start: the CLIs print no TensorFlow / absl / CUDA start-up lines; real warnings stay."""

import os
import pathlib
import subprocess
import sys

from sml_jax import quiet

REPO = pathlib.Path(__file__).resolve().parents[1]
def test_filter_drops_the_start_up_lines_and_keeps_the_rest_in_order(capfd):
  lines = [
      "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
      "I0000 00:00:1795819417.643978    1983 port.cc:153] oneDNN custom operations are on. You may\n",
      "a real warning from C++\n",
      "I0000 00:00:1795819417.645017    1983 cudart_stub.cc:31] Could not find cuda drivers on your "
      "machine, GPU will not be used.\n",
      "E0000 00:00:1795819418.986087    1983 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
      "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
      "E0000 00:00:1795819418.986087    1983 other.cc:1] a real error\n",
  ]
  with quiet.filtered_stderr():
    for line in lines:
      os.write(2, line.encode())  # At the fd, as C++ writes: sys.stderr is not involved.
  err = capfd.readouterr().err
  assert err == "a real warning from C++\nE0000 00:00:1795819418.986087    1983 other.cc:1] " \
                "a real error\n"


def _env():
  env = dict(os.environ)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # The CLI must set what it needs itself.
  return env


def test_plan_cli_is_quiet_and_still_shows_a_real_warning(assert_quiet):
  # plan builds the model's shapes (gemma -> kauldron -> tensorflow): the noisy import path.
  proc = subprocess.run(
      [sys.executable, "-m", "sml_jax.plan", "--config=configs/tiny_test.py",
       "--config.optimizer.clip_norm=1.0"],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_quiet(proc.stdout + proc.stderr)
  assert "warning: config.optimizer.clip_norm is deprecated" in proc.stdout + proc.stderr
  assert "FITS" in proc.stdout
