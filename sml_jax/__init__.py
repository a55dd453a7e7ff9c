"""sml_jax: Social Meta-Learning finetuning of Gemma models in JAX. Kept import-light."""
