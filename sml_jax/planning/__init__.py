"""Run planning above the kernels: `memory.py` estimates bytes per device of a run's params,
optimizer state, train-step activations and KV caches (read by `python -m sml_jax.plan`)."""
