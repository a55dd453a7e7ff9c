"""Shared fixtures. The real Gemma 3 270M is converted once per cache dir and shared per session."""

import os
import subprocess
import sys

import pytest

# Quieter TF/XLA logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tokenizer():
  from sml_jax import models
  return models.load_tokenizer("gemma3_270m")


@pytest.fixture(scope="session")
def real_270m():
  """(model, params) of the embedded Gemma 3 270M, float32."""
  from sml_jax import models
  return models.build_model("gemma3_270m"), models.load_params("gemma3_270m")


@pytest.fixture(scope="session")
def tiny():
  """(model, params) of the random-init `tiny` model, float32."""
  from sml_jax import models
  return models.build_model("tiny"), models.load_params("tiny")


def run_with_devices(code: str, num_devices: int = 8, timeout: float = 600) -> str:
  """Runs python `code` in a subprocess with `num_devices` fake CPU devices; returns stdout."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)
  if proc.returncode:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc.stdout


# Start-up lines of TF / absl / CUDA that no CLI may print (see sml_jax/quiet.py).
NOISE_MARKERS = ("oneDNN custom operations", "Could not find cuda drivers", "cuInit", "E0000",
                 "WARNING: All log messages before absl::InitializeLog")


def check_quiet(text: str) -> None:
  for marker in NOISE_MARKERS:
    assert marker not in text, f"start-up noise {marker!r} on the console:\n{text[-3000:]}"


@pytest.fixture(scope="session")
def assert_quiet():
  return check_quiet


@pytest.fixture(scope="session")
def fake_devices():
  return run_with_devices
