"""sml_jax.training"""
