"""sml_jax.sampling"""
