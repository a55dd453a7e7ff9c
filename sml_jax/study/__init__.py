"""The CPU-scale study of issue 17: `python -m sml_jax.study --workdir=DIR` (see __main__.py)."""
