"""A bubblewrap sandbox for untrusted python programs (standard library only: no jax import)."""

from sml_jax.sandbox.bwrap import Limits
from sml_jax.sandbox.runner import (RunResult, SandboxUnavailable, run_many, run_program,
                                    sandbox_available)

__all__ = ["Limits", "RunResult", "SandboxUnavailable", "run_many", "run_program",
           "sandbox_available"]
