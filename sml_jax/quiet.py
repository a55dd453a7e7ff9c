"""A quiet start for the CLIs: no TensorFlow / absl / CUDA start-up lines, real warnings kept.

Importing TensorFlow (pulled in by gemma -> kauldron and by tfds / seqio) writes, from C++,
before absl::InitializeLog, lines a newcomer reads as errors:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    E0000 ... cuda_platform.cc:52] failed call to cuInit: ... (303)

They bypass TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442), so they can only be dropped at
the file descriptor. `install()` (called first by every CLI, stdlib only, so `--help` stays
light) registers an import hook: the first `import tensorflow`, wherever it happens, runs with
fd 2 sent to a temporary file; afterwards every line of it that is not one of the known start-up
lines above is written back to stderr, in order. Inside the same window TensorFlow is told to see
no GPU: it only feeds data here (JAX computes), so its CUDA probe (the cuInit line) has no use and
TF never takes accelerator memory from JAX (kauldron's data workers do the same). JAX's platform
choice is untouched: TPU and GPU are still picked when present.

Python logging goes to WARNING (JAX's INFO "Unable to initialize backend 'tpu'" lines are not
shown; absl's `--verbosity` flag still overrides), and TF_CPP_MIN_LOG_LEVEL defaults to 2 (a value
the user set is kept).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from typing import Iterator, Sequence

# Start-up lines dropped from stderr. Anything else written in the window is kept.
NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written "
               r"to STDERR$"),
    re.compile(r"^I\d{4} .*\] oneDNN custom operations are on\."),
    re.compile(r"^I\d{4} .*\] Could not find cuda drivers on your machine, GPU will not be used\."),
    re.compile(r"^E\d{4} .*\] failed call to cuInit: "),
)


def is_noise(line: str) -> bool:
  return any(p.search(line) for p in NOISE)


@contextlib.contextmanager
def filtered_stderr(noise: Sequence[re.Pattern] = NOISE) -> Iterator[None]:
  """Sends fd 2 to a temporary file; on exit writes back the lines no `noise` pattern matches.

  Works for C/C++ writers (they write to the fd, not to `sys.stderr`). A file, not a pipe: no
  reader thread, and a writer can never block on a full pipe.
  """
  try:
    saved = os.dup(2)
  except OSError:  # No fd 2 (e.g. a daemon): nothing to filter.
    yield
    return
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    sys.stderr.flush()
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      with contextlib.suppress(Exception):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
              if not any(p.search(line.rstrip("\n")) for p in noise)]
      if kept:
        os.write(2, "".join(kept).encode())


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Wraps the loader of the top-level `tensorflow` package so its import runs filtered."""

  def find_spec(self, fullname, path, target=None):
    if fullname != "tensorflow":
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None or spec.loader is None:
      return None
    spec.loader = _QuietLoader(spec.loader)
    return spec


class _QuietLoader(importlib.abc.Loader):

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with filtered_stderr():
      self._loader.exec_module(module)
      # TF feeds data only; without this its GPU probe logs the cuInit failure later, unfiltered.
      with contextlib.suppress(Exception):
        module.config.set_visible_devices([], "GPU")

  def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader.
    return getattr(self._loader, name)


def install() -> None:
  """Sets the environment and logging for a quiet start; call before anything imports TF."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.getLogger().setLevel(logging.WARNING)
  with contextlib.suppress(ImportError):
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.WARNING)
  if "tensorflow" not in sys.modules and not any(
      isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowFinder())
