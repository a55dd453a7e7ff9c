"""sml_jax.dialogue"""
