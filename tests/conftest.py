"""Shared fixtures. The real Gemma 3 270M is converted once per cache dir and shared per session."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# Quieter TF/XLA logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compilation_cache() -> None:
  """One persistent XLA compilation cache for this session and every subprocess it starts (they
  inherit the environment): the many `sml_jax.main` / fake-device runs compile the same tiny
  programs, and a killed-then-resumed run recompiles what its first attempt did. A fresh
  directory per session (removed at exit), so a run's time never depends on an earlier run;
  SML_JAX_TEST_JAX_CACHE=DIR keeps one across sessions instead. Set before jax is imported."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  path = os.environ.get("SML_JAX_TEST_JAX_CACHE")
  if not path:
    path = tempfile.mkdtemp(prefix="sml_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"  # Skip trivial programs.
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


_compilation_cache()


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


@pytest.fixture(scope="session")
def tiny_lora(tiny):
  """(LoRA rank-4 model, trainable factors with non-zero B, frozen base) of `tiny`, built once:
  the LoRA train state's init is a compile of its own (~10 s), and one model object lets gemma's
  nn.jit reuse its LoRA trace across tests. Arrays are immutable, so sharing is safe."""
  from sml_jax import models
  from tests.exactness import lora_state
  model = models.build_model("tiny", lora_rank=4)
  return (model, *lora_state(model, tiny[1]))


def run_with_devices(code: str, num_devices: int = 8, timeout: float = 600,
                     stdin: str | None = None) -> str:
  """Runs python `code` in a subprocess with `num_devices` fake CPU devices; returns stdout."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, input=stdin)
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


@pytest.fixture(scope="session")
def eight_devices():
  """name -> stdout of that 8-fake-device program; all of them run once, in one subprocess
  (tests/eight_devices.py). A program that failed raises here, with its traceback."""
  from tests import eight_devices as eight  # pylint: disable=g-import-not-at-top
  results = eight.run_all(run_with_devices)

  def stdout(name: str) -> str:
    r = results[name]
    if not r["ok"]:
      raise AssertionError(f"8-device program {name!r} failed:\n{r['stdout'][-2000:]}\n"
                           f"{r['error'][-4000:]}")
    return r["stdout"]
  return stdout


# The longest fast tests (from `make test --durations`), run first: with two xdist workers the
# light tests then fill in around them and both workers finish together, instead of one worker
# starting a 60 s test while the other has nothing left.
_LONG_FIRST = (
    "test_rl_update_with_signal_moves_rewarded_turns_up", "test_tiny_pipeline_matches_golden",
    "test_rl_bench_splits_an_iteration_on_tiny", "test_tiny_shared_prefix_step_is_exact",
    "test_tiny_step_is_exact", "test_kl_to_the_frozen_initial_policy_is_logged_and_starts_at_zero",
    "test_eval_tasks_take_curriculum_entries_with_arguments",
    "test_conversion_is_cached_and_deterministic",
    "test_iteration_rows_count_truncation_and_out_of_context",
    "test_ppo_and_kl_in_rl_leave_the_sft_stage_plain",
    "test_tiny_shared_prefix_train_step_with_micro_batches_and_remat_is_exact",
)


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: getattr(item, "originalname", item.name) not in _LONG_FIRST)
