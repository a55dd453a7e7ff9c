"""sml_jax: Social Meta-Learning finetuning of Gemma models in JAX. Kept import-light."""
import os as _os

# gs:// paths go through etils.epath's gcsfs backend, not TF's gfile (TF is installed, as a
# dependency of gemma's data tools): one GCS client for every file (`sml_jax/paths.py`).
_os.environ.setdefault("EPATH_USE_TF", "false")
