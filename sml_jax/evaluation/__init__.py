"""sml_jax.evaluation: metrics over conversation transcripts, eval files, report, plots, viewer.

    from sml_jax import evaluation
    m = evaluation.compute_metrics(transcripts, max_k=10)         # metrics.py
    evaluation.write_eval(workdir, "before_gsm8k", transcripts, extra={"model": "gemma3_270m"})
    print(evaluation.write_report(workdir))                         # report.md, PNGs, transcripts.html

Pure python + numpy (+ matplotlib for the report): no jax. Attributes load lazily (PEP 562) so
`import sml_jax.evaluation` stays cheap.
"""

import importlib

_EXPORTS = {
    "compute_metrics": "metrics",
    "write_eval": "store",
    "read_evals": "store",
    "read_transcripts": "store",
    "read_train_log": "store",
    "validate_transcripts": "schema",
    "write_report": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
