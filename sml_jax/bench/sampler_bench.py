"""Sampler benchmark: ours vs `gm.text.Sampler` on the embedded Gemma 3 270M, plus a multi-turn
student/teacher case and the hardware roofline.

    python -m sml_jax.bench sampler [--json] [--full] [--batches=1,8] [--skip_reference_default]

The default run takes about 5 minutes on 2 CPU cores: batch 32, one timed call per sampler, the
reference at the same cache only, and a small multi-turn case (8 conversations x 2 turns).
`--full` is the whole sweep (about 20 minutes there): batches 1, 8 and 32, best of 2, the
reference also at its default 4,096-slot cache (the slowest part), and 32 conversations x 4
turns. Any option given explicitly wins over either preset; the JSON keys are the same.

Single turn: greedy, `--max_new_tokens` (64) new tokens per row, at each batch size; tokens/s =
batch * max_new_tokens / wall time of one whole call (prefill included), best of `--repeats`
after a warm-up call (compilation excluded). Ours runs without stop tokens, so every row
generates the full budget; the reference keeps its built-in end tokens (it rarely stops early
on these prompts; its counts are reported).

Multi-turn (ours): `--mt_batch` conversations x `--turns` student turns of `--student_tokens`
and teacher turns of `--teacher_tokens`, two caches (student; teacher = privileged prefix +
the same conversation) advanced in lockstep, each side appending the other's turn.

Roofline: per decode step at batch B and context T: FLOPs = 2 B (params) + 4 B T L H D (attention),
bytes = all weights once + the KV cache read; time = max(FLOPs / peak matmul FLOP/s, bytes /
read bandwidth), both measured here. Fraction = ours tok/s / (B / that time).

Matmul-only floor: the same step's weight matmuls alone (every layer's q, kv, out, gating and
down projections and the unembedding, chained at batch B in the compute dtype, nothing else),
timed here. The peak above comes from a square 2048^3 matmul; at decode shapes (B rows against a
640 x 262144 table) XLA:CPU's GEMM reaches far less of it, and no decode step can beat its own
matmuls. `matmul_only_fraction` = ours tok/s / (B / that time); what it lacks from 1 is the time
spent on everything else (attention, norms, sampling, prefill).
"""

from __future__ import annotations

import argparse
import json
import time

PROMPTS = [
    "def fibonacci(n):",
    "The Eiffel Tower is in",
    "Once upon a time, in a small village by the sea, there lived",
    "Question: What is 12 times 7? Answer:",
    "import numpy as np\n\ndef softmax(x):",
    "The three primary colors are",
    "In 1969, the first humans to walk on the Moon were",
    "Photosynthesis is the process by which plants",
]


# Option -> (default, --full). The default is what a user can wait for; --full the whole sweep.
PRESETS = {
    "batches": ("32", "1,8,32"),
    "repeats": (1, 2),
    "skip_reference_default": (True, False),
    "mt_batch": (8, 32),
    "turns": (2, 4),
}


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m sml_jax.bench sampler", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--full", action="store_true",
                 help="The whole sweep (batches 1,8,32; best of 2; reference at its default "
                 "cache too; 32 x 4-turn dialogues): about 20 min on 2 CPU cores.")
  p.add_argument("--model", default="gemma3_270m", help="Model name (see sml_jax.models).")
  p.add_argument("--batches", default=None, help="Comma-separated batch sizes (default 32; "
                 "--full: 1,8,32).")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--cache_length", type=int, default=512,
                 help="Cache length of ours and of the same-cache reference.")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--repeats", type=int, default=None, help="Timed calls after the warm-up "
                 "(default 1; --full: 2).")
  p.add_argument("--skip_reference", action="store_true", help="No gm.text.Sampler runs.")
  p.add_argument("--skip_reference_default", action="store_true", default=None,
                 help="No gm.text.Sampler run at its default 4096-token cache (the slowest; "
                 "skipped unless --full).")
  p.add_argument("--skip_multi_turn", action="store_true")
  p.add_argument("--mt_batch", type=int, default=None,
                 help="Conversations (default 8; --full: 32).")
  p.add_argument("--turns", type=int, default=None, help="Student turns (default 2; --full: 4).")
  p.add_argument("--student_tokens", type=int, default=64)
  p.add_argument("--teacher_tokens", type=int, default=48)
  p.add_argument("--mt_cache_length", type=int, default=1024)
  p.add_argument("--json", action="store_true", help="Last line: one JSON object.")
  args = p.parse_args(argv)
  for name, (quick, full) in PRESETS.items():
    if getattr(args, name) is None:
      setattr(args, name, full if args.full else quick)
  for name in ("repeats", "mt_batch", "turns", "max_new_tokens", "cache_length"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1")
  return args


def _best(fn, repeats, cpu_out=None):
  """Best wall time of `repeats` calls after a warm-up call (which compiles). The process CPU
  time of that call goes to `cpu_out["cpu"]`: on a shared machine it is steadier than wall."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    wall = time.perf_counter() - start
    if wall < best:
      best = wall
      if cpu_out is not None:
        cpu_out["cpu"] = time.process_time() - cpu
  return best


def decode_step_cost(arch, n_params: int, batch: int, context: float, dtype_bytes: int):
  """(FLOPs, bytes) of one decode step of `batch` rows attending to `context` tokens."""
  kv_width = arch.num_kv_heads * arch.head_dim
  flops = 2.0 * batch * n_params + 4.0 * batch * context * arch.num_layers * (
      arch.num_heads * arch.head_dim)
  kv_bytes = batch * context * 2 * kv_width * arch.num_layers * dtype_bytes
  return flops, n_params * dtype_bytes + kv_bytes


def matmul_only_seconds(arch, params, batch: int, dtype, repeats: int = 3) -> float:
  """Seconds per decode step of the step's weight matmuls alone at `batch` rows (see above).

  Built like `decode.decode`: params go to the decode layout inside the jit, then a loop of
  steps; per step = (time of 40 steps - time of 8) / 32, so the layout work cancels out."""
  import jax
  import jax.numpy as jnp
  from sml_jax.sampling import decode
  from sml_jax.sampling import forward as fwd

  @jax.jit
  def steps(params, x, n):                     # n traced: one compile serves both lengths
    layout = decode.prepare_params(arch, params, dtype)
    ffw = layout["layer_0"]["wl"].shape[0]

    def one_step(_, x):                        # x (B, D); each product feeds the next
      h = x
      for i in range(arch.num_layers):
        p = layout[f"layer_{i}"]
        q, kv = fwd.project(h, p["wq"]), fwd.project(h, p["wkv"])
        h = fwd.project(q, p["wo"]) + jnp.sum(kv, -1, keepdims=True)
        h = fwd.project(fwd.gate_projection(arch, p, h)[:, :ffw], p["wl"])
      logits = fwd.logits_from_hidden(arch, layout, h)
      # Feed a negligible function of the logits back, so XLA cannot drop the unembedding.
      return x + jnp.max(logits, -1, keepdims=True).astype(x.dtype) * 1e-9
    return jax.lax.fori_loop(0, n, one_step, x)

  x = jnp.full((batch, arch.embed_dim), 0.01, dtype)

  def best(n):
    n = jnp.int32(n)
    return _best(lambda: jax.block_until_ready(steps(params, x, n)), repeats)
  return max(best(40) - best(8), 1e-9) / 32


def run(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gemma import gm
  from sml_jax import models
  from sml_jax.bench import hardware
  from sml_jax.sampling import Sampler
  from sml_jax.sampling import forward as fwd

  dtype = jnp.dtype(args.dtype)
  batches = [int(b) for b in args.batches.split(",") if b]
  n = args.max_new_tokens
  print("measuring hardware ...", flush=True)
  hw = hardware.measure()
  print("  " + hardware.describe(hw), flush=True)
  tokenizer = models.load_tokenizer(args.model)
  model = models.build_model(args.model, dtype=dtype)
  params = models.load_params(args.model, dtype=dtype)
  arch = fwd.Arch.from_model(model)
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  results = {"ours_tok_s": {}, "reference_tok_s": {}, "reference_default_tok_s": {},
             "ours_cpu_s": {}, "reference_cpu_s": {},
             "roofline_fraction": {}, "ceiling_tok_s": {}, "reference_tokens_generated": {},
             "matmul_only_tok_s": {}, "matmul_only_fraction": {},
             "model": args.model, "full": args.full, "dtype": args.dtype, "max_new_tokens": n,
             "cache_length": args.cache_length,
             "hardware": hw, "n_params": n_params}

  ours = Sampler(model, cache_length=args.cache_length, dtype=dtype, stop_tokens=())
  costs = {}   # batch -> (FLOPs, bytes) of its mean decode step
  for b in batches:
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
    ids = [list(tokenizer.encode(t, add_bos=True)) for t in texts]
    cpu = {}
    t = _best(lambda: ours.generate(params, ids, max_new_tokens=n), args.repeats, cpu)
    results["ours_tok_s"][str(b)] = b * n / t
    results["ours_cpu_s"][str(b)] = cpu["cpu"]
    context = float(np.mean([len(x) for x in ids])) + n / 2
    costs[b] = decode_step_cost(arch, n_params, b, context, dtype.itemsize)
    print(f"batch {b:3d}: ours {b * n / t:8.1f} tok/s ({t:.2f} s, cpu {cpu['cpu']:.2f} s)  "
          f"ceiling {b / hardware.roofline_seconds(*costs[b], hw):8.1f} tok/s (so far)",
          flush=True)
    refs = [] if args.skip_reference else [("reference_tok_s", args.cache_length)]
    if not (args.skip_reference or args.skip_reference_default):
      refs.append(("reference_default_tok_s", None))
    for key, cache_length in refs:
      kwargs = {} if cache_length is None else {"cache_length": cache_length}
      ref = gm.text.Sampler(model=model, params=params, tokenizer=tokenizer, **kwargs)
      holder = {}

      def call():
        holder["out"] = ref.sample(texts, max_new_tokens=n, return_state=True)
      t = _best(call, args.repeats if cache_length else 1, cpu)
      results[key][str(b)] = b * n / t
      if cache_length:
        results["reference_cpu_s"][str(b)] = cpu["cpu"]
      generated = int(np.sum(np.asarray(holder["out"].state.predicted_tokens)[:, :n] != 0))
      results["reference_tokens_generated"][f"{b}@{cache_length or 'default'}"] = generated
      print(f"           gm.text.Sampler (cache {cache_length or 'default 4096'}): "
            f"{b * n / t:8.1f} tok/s ({t:.2f} s, cpu {cpu['cpu']:.2f} s, {generated} tokens)  "
            f"ours is {results['ours_tok_s'][str(b)] / (b * n / t):.1f}x", flush=True)

  # The ceiling is the best the hardware showed, measured before and after the runs.
  hw = hardware.best_of(hw, hardware.measure())
  results["hardware"] = hw
  print("  " + hardware.describe(hw) + " (best of before and after)", flush=True)
  for b in batches:
    ceiling = b / hardware.roofline_seconds(*costs[b], hw)
    results["ceiling_tok_s"][str(b)] = ceiling
    results["roofline_fraction"][str(b)] = results["ours_tok_s"][str(b)] / ceiling
    matmul_only = b / matmul_only_seconds(arch, params, b, dtype)
    results["matmul_only_tok_s"][str(b)] = matmul_only
    results["matmul_only_fraction"][str(b)] = results["ours_tok_s"][str(b)] / matmul_only
    ref = results["reference_tok_s"].get(str(b))
    print(f"batch {b:3d}: ours {results['ours_tok_s'][str(b)]:8.1f} tok/s, ceiling {ceiling:8.1f} "
          f"tok/s -> {results['roofline_fraction'][str(b)]:.0%} of roofline; matmuls alone "
          f"{matmul_only:8.1f} tok/s -> {results['matmul_only_fraction'][str(b)]:.0%} of them"
          + (f"; {results['ours_tok_s'][str(b)] / ref:.1f}x gm.text.Sampler at the same cache"
             if ref else ""), flush=True)
  if not args.skip_multi_turn:
    results["multi_turn"] = multi_turn(args, model, params, tokenizer, arch, n_params, hw)
  return results


def multi_turn(args, model, params, tokenizer, arch, n_params, hw) -> dict:
  import jax.numpy as jnp
  import numpy as np
  from sml_jax.bench import hardware
  from sml_jax.models import tokens as ids
  from sml_jax.sampling import Sampler

  dtype = jnp.dtype(args.dtype)
  b = args.mt_batch
  sampler = Sampler(model, cache_length=args.mt_cache_length, dtype=dtype, stop_tokens=())
  head = lambda role: [ids.START_OF_TURN_ID] + list(tokenizer.encode(f"{role}\n"))
  tail = [ids.END_OF_TURN_ID] + list(tokenizer.encode("\n"))
  problems = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
  student = [[ids.BOS_ID] + head("user") + list(tokenizer.encode(p)) + tail + head("model")
             for p in problems]
  secret = list(tokenizer.encode("You are the teacher. The reference answer is 42. Guide the "
                                 "student without revealing it.\n\n"))
  teacher = [[2] + secret + s[1:] for s in student]
  stats = {}

  def dialogue():
    s_state = sampler.start(params, student)
    t_state = sampler.start(params, teacher)
    tokens = 0
    for turn in range(args.turns):
      s_state, s_out = sampler.sample(params, s_state, max_new_tokens=args.student_tokens,
                                      seed=turn)
      t_state = sampler.append(params, t_state, [list(x) + tail + head("user")
                                                 for x in s_out.tokens])
      t_state, t_out = sampler.sample(params, t_state, max_new_tokens=args.teacher_tokens,
                                      seed=100 + turn)
      s_state = sampler.append(params, s_state, [tail + head("user") + list(x) + tail
                                                 + head("model") for x in t_out.tokens])
      tokens += sum(len(x) for x in s_out.tokens) + sum(len(x) for x in t_out.tokens)
    stats["tokens"] = tokens
    stats["final_lengths"] = [int(s_state.lengths.max()), int(t_state.lengths.max())]

  start = time.perf_counter()
  dialogue()
  cold = time.perf_counter() - start
  start, cpu = time.perf_counter(), time.process_time()
  dialogue()
  warm = time.perf_counter() - start
  cpu = time.process_time() - cpu
  # Roofline: every decode step of both parties at its mean context.
  s_len, t_len = np.mean([len(x) for x in student]), np.mean([len(x) for x in teacher])
  floor = 0.0
  per_turn = args.student_tokens + args.teacher_tokens + 2 * (len(tail) + 3)
  for turn in range(args.turns):
    for steps, base in ((args.student_tokens, s_len), (args.teacher_tokens, t_len)):
      context = base + turn * per_turn + steps / 2
      flops, nbytes = decode_step_cost(arch, n_params, b, context, dtype.itemsize)
      floor += steps * hardware.roofline_seconds(flops, nbytes, hw)
  out = {"conversations": b, "turns": args.turns, "tokens": stats["tokens"],
         "seconds": warm, "cpu_seconds": cpu, "seconds_with_compile": cold,
         "tok_s": stats["tokens"] / warm,
         "ceiling_tok_s": stats["tokens"] / floor, "roofline_fraction": floor / warm,
         "final_context_lengths": stats["final_lengths"]}
  print(f"multi-turn: {b} conversations x {args.turns} turns (student {args.student_tokens} + "
        f"teacher {args.teacher_tokens} tokens): {out['tok_s']:.1f} tok/s ({warm:.1f} s, cpu "
        f"{cpu:.1f} s; "
        f"{cold:.1f} s with compilation), {out['roofline_fraction']:.0%} of roofline",
        flush=True)
  return out


def main(argv=None) -> dict:
  import sys
  args = parse_args(sys.argv[1:] if argv is None else argv)
  results = run(args)
  if args.json:
    print(json.dumps(results))
  return results
