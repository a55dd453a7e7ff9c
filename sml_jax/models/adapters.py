"""Exported LoRA adapters: a trained student as its LoRA factors (bfloat16) plus what base they sit on.

    export_from_workdir("/runs/online_sml/seed0", "results/study/students/online_sml")
    meta, lora = load_adapter("results/study/students/online_sml")
    python -m sml_jax.main --config=configs/eval.py --config.checkpoint=results/study/students/online_sml

An adapter directory holds two files:

  adapter.json   {"format": "sml_jax.lora_adapter", "version": 1, "model": "gemma3_270m",
                  "lora_rank": 16, "dtype": "bfloat16", "base_checkpoint": null, "base_seed": 0,
                  "num_params": 2990080, "sha256": {"lora.npz": "..."}, "source": {...}}
  lora.npz       one array per LoRA factor, keyed by its '/'-joined param path
                 ("layer_0/attn/q_einsum/lora/a"), stored as the uint16 bit pattern of its
                 bfloat16 value (numpy has no bfloat16: `view(ml_dtypes.bfloat16)` restores it)

The base weights are not copied: `base_checkpoint` None means the embedded Gemma 3 270M (or, for
`tiny`, the random init of `base_seed`), else an orbax params checkpoint. `adapter.json` is written
last, so a directory with it is complete. Loading checks the format, the checksum and the rank.

Import-light (numpy, json): config validation reads `adapter.json` at CLI start-up; orbax loads
only inside `export_from_workdir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Mapping

import numpy as np

FORMAT = "sml_jax.lora_adapter"
VERSION = 1
META_FILE = "adapter.json"
FACTORS_FILE = "lora.npz"
MAX_BYTES = 10 * 1024 * 1024       # an exported student must stay small enough to commit
Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class AdapterMeta:
  model: str                       # model name (models.registry.MODEL_NAMES)
  lora_rank: int
  base_checkpoint: str | None      # None: embedded 270M / random init of `tiny` with base_seed
  base_seed: int = 0
  num_params: int = 0
  dtype: str = "bfloat16"
  source: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # informational


def is_adapter_dir(path: str | os.PathLike | None) -> bool:
  return path is not None and os.path.isfile(os.path.join(os.fspath(path), META_FILE))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    out.update(_flatten(v, key) if isinstance(v, Mapping) else {key: v})
  return out


def _unflatten(flat: Mapping[str, Any]) -> Params:
  tree: Params = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def save_adapter(out_dir: str, lora: Params, meta: AdapterMeta, *,
                 max_bytes: int = MAX_BYTES) -> str:
  """Writes `lora` (only 'lora' branches: {.../lora/a, .../lora/b}) as bfloat16 + adapter.json.

  Raises ValueError if a leaf is not a LoRA factor or the factors file exceeds `max_bytes`."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  flat = _flatten(lora)
  if not flat:
    raise ValueError("no LoRA factors to export (was the run trained with lora_rank > 0?).")
  bad = [k for k in flat if k.split("/")[-2:-1] != ["lora"]]
  if bad:
    raise ValueError(f"not LoRA factors (expected paths ending in lora/a or lora/b): {bad[:3]}")
  arrays = {k: np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
            for k, v in sorted(flat.items())}
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  if buf.tell() > max_bytes:
    raise ValueError(f"the adapter's factors take {buf.tell() / 2**20:.1f} MB in bfloat16, over the "
                     f"{max_bytes / 2**20:.1f} MB limit; lower lora_rank.")
  os.makedirs(out_dir, exist_ok=True)
  meta_path = os.path.join(out_dir, META_FILE)
  if os.path.exists(meta_path):   # Incomplete until adapter.json is back.
    os.remove(meta_path)
  factors = os.path.join(out_dir, FACTORS_FILE)
  with open(factors, "wb") as f:
    f.write(buf.getvalue())
  record = {"format": FORMAT, "version": VERSION, **dataclasses.asdict(meta),
            "num_params": int(sum(a.size for a in arrays.values())),
            "sha256": {FACTORS_FILE: _sha256(factors)}}
  tmp = meta_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, meta_path)
  return out_dir


def read_meta(path: str) -> AdapterMeta:
  """The adapter's metadata; ValueError naming the file when it is not a valid adapter."""
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{path} is not an adapter directory (no {META_FILE}).")
  with open(meta_path, encoding="utf-8") as f:
    try:
      record = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{meta_path}: not valid JSON: {e}") from None
  if record.get("format") != FORMAT or record.get("version") != VERSION:
    raise ValueError(f"{meta_path}: format {record.get('format')!r} version "
                     f"{record.get('version')!r}; expected {FORMAT!r} version {VERSION}.")
  if record.get("dtype") != "bfloat16":
    raise ValueError(f"{meta_path}: dtype {record.get('dtype')!r}; expected 'bfloat16'.")
  fields = {f.name for f in dataclasses.fields(AdapterMeta)}
  meta = AdapterMeta(**{k: v for k, v in record.items() if k in fields})
  if not isinstance(meta.lora_rank, int) or meta.lora_rank < 1:
    raise ValueError(f"{meta_path}: lora_rank must be a positive int, got {meta.lora_rank!r}.")
  return meta


def load_adapter(path: str) -> tuple[AdapterMeta, Params]:
  """(metadata, the LoRA factors as a float32 param tree). Checks the factors' checksum."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  meta = read_meta(path)
  with open(os.path.join(path, META_FILE), encoding="utf-8") as f:
    want = json.load(f).get("sha256", {}).get(FACTORS_FILE)
  factors = os.path.join(path, FACTORS_FILE)
  if not os.path.isfile(factors):
    raise FileNotFoundError(f"{path}: missing {FACTORS_FILE}.")
  if want != _sha256(factors):
    raise ValueError(f"{factors}: checksum does not match {META_FILE} (a corrupt or edited file).")
  with np.load(factors) as npz:
    flat = {k: npz[k].view(ml_dtypes.bfloat16).astype(np.float32) for k in npz.files}
  return meta, _unflatten(flat)


def check_student(model: str, checkpoint: str | None, lora_rank: int) -> None:
  """Config checks for a student given as an adapter directory (no-op otherwise): the adapter's
  model must be `model`, and `lora_rank` 0 (taken from the adapter) or the adapter's rank."""
  if not is_adapter_dir(checkpoint):
    return
  meta = read_meta(checkpoint)
  if meta.model != model:
    raise ValueError(f"config.model: {model!r}, but the adapter {checkpoint} is for "
                     f"{meta.model!r} (pass --config.model={meta.model}).")
  if lora_rank not in (0, meta.lora_rank):
    raise ValueError(f"config.lora_rank: {lora_rank}, but the adapter {checkpoint} has rank "
                     f"{meta.lora_rank} (leave it 0 to take the adapter's).")


def export_from_workdir(workdir: str, out_dir: str, *, max_bytes: int = MAX_BYTES) -> str:
  """The LoRA factors of a run's newest checkpoint -> an adapter directory (bfloat16).

  The run's `config.json` names the model and its base weights; a run that itself started from
  an adapter keeps that adapter's base."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  base_ckpt, base_seed, rank = config.get("checkpoint"), int(config.get("seed", 0)), \
      int(config.get("lora_rank") or 0)
  if is_adapter_dir(base_ckpt):   # The run trained that adapter's factors further.
    parent = read_meta(base_ckpt)
    base_ckpt, base_seed, rank = parent.base_checkpoint, parent.base_seed, parent.lora_rank
  if not rank:
    raise ValueError(f"{workdir}: the run trained every weight (lora_rank 0); only LoRA runs "
                     "export as adapters.")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = sorted(int(p) for p in os.listdir(ckpt_dir) if p.isdigit()) if os.path.isdir(
      ckpt_dir) else []
  if not steps:
    raise FileNotFoundError(f"{workdir}: no checkpoint to export.")
  state = ocp.StandardCheckpointer().restore(os.path.join(ckpt_dir, str(steps[-1]), "state"))
  meta = AdapterMeta(model=config["model"], lora_rank=rank,
                     base_checkpoint=base_ckpt, base_seed=base_seed,
                     source={"workdir": os.path.abspath(workdir), "checkpoint_step": steps[-1]})
  return save_adapter(out_dir, state["params"], meta, max_bytes=max_bytes)
