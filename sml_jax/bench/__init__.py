"""Benchmarks: `python -m sml_jax.bench {sampler,train} [--json]`."""
