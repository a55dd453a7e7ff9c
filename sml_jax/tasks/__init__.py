"""sml_jax.tasks"""
