"""sml_jax.evaluation"""
