"""Train-step throughput and MFU on the embedded Gemma 3 270M, full finetune and LoRA.

    python -m sml_jax.bench train [--json] [--full] [--batch 4 --seq 256 --steps 2]
        [--variants lora,full]

The default (4 x 256 tokens, 2 timed steps per variant) takes about 5 minutes on 2 CPU cores;
`--full` is the longer run (8 x 256 tokens, 3 timed steps). Options given explicitly win over
either preset; the JSON keys are the same.

Times `sml_jax.training.train_step` (the step every stage uses: bf16 compute, f32 master params
and AdamW state, fused chunked unembedding) on random tokens, every token a student token.
MFU = model FLOP/s / measured bf16 matmul peak (a jitted 2048^3 bf16 `jnp.dot`; `peak_flops` is
the best measured in this run: before the variants and around every timed step). On a shared
machine `mfu_vs_concurrent_peak` (each step against the peak measured right around it) is the
steadier figure. Model FLOPs per token (PaLM appendix B convention):

    full finetune: 6 N + 12 L H Dh T        (N = all params, the tied embedding counted once)
    LoRA:          4 N + 6 N_lora + 12 L H Dh T   (no weight gradients for the frozen base)

Variants run LoRA first, then full: the process's peak RSS after each is that variant's peak
(full finetune needs more; the last variant frees the benchmark's own copy of the params). XLA's
memory analysis of the compiled step (arguments + temporaries) is reported too. With --json the
last stdout line is one JSON object with `tokens_per_s`, `mfu` and `achieved_flops` (by
variant), `peak_flops`, and details.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time


# Option -> (default, --full).
PRESETS = {"batch": (4, 8), "steps": (2, 3)}


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m sml_jax.bench train", description=__doc__.split("\n")[0])
  p.add_argument("--full", action="store_true", help="the longer run: --batch 8 --steps 3")
  p.add_argument("--model", default="gemma3_270m")
  p.add_argument("--batch", type=int, default=None, help="rows per step (default 4; --full: 8)")
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--steps", type=int, default=None,
                 help="timed steps per variant after 1 warm-up (default 2; --full: 3)")
  p.add_argument("--variants", default="lora,full", help="comma list of: full, lora")
  p.add_argument("--lora-rank", type=int, default=8)
  p.add_argument("--micro-batches", type=int, default=1)
  p.add_argument("--chunk", type=int, default=512, help="unembedding chunk (tokens)")
  p.add_argument("--compute-dtype", default="bfloat16", choices=("bfloat16", "float32"))
  p.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  for name, (quick, full) in PRESETS.items():
    if getattr(args, name) is None:
      setattr(args, name, full if args.full else quick)
  variants = [v for v in args.variants.split(",") if v]
  bad = [v for v in variants if v not in ("full", "lora")]
  if bad or not variants:
    p.error(f"--variants: unknown {bad or variants}; use full and/or lora")
  for name in ("batch", "seq", "steps", "lora_rank", "micro_batches", "chunk", "peak_size"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  if args.seq < 2:
    p.error("--seq must be >= 2")
  args.variants = sorted(variants, key=("lora", "full").index)
  return args


def measure_matmul_peak(n: int = 2048, dtype: str = "bfloat16", repeats: int = 5) -> float:
  """FLOP/s of a jitted n^3 matmul (best of `repeats`). Prefers `sml_jax.bench.hardware` when
  it provides `matmul_peak_flops(n=..., dtype=..., repeats=...)`, so every benchmark uses one
  peak."""
  try:
    from sml_jax.bench import hardware  # pylint: disable=g-import-not-at-top
    fn = getattr(hardware, "matmul_peak_flops", None)
    if fn is not None:
      return float(fn(n=n, dtype=dtype, repeats=repeats))
  except ImportError:
    pass
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), dtype)
  b = jax.random.normal(k2, (n, n), dtype)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def model_flops_per_token(cfg, n_params: int, seq: int, n_lora: int = 0, lora: bool = False):
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq
  return (4 * n_params + 6 * n_lora if lora else 6 * n_params) + attention


def random_batch(batch: int, seq: int, seed: int = 0):
  """Random tokens, every token after the first a student token (the costliest case)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sml_jax.training import batching  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 262_000, (batch, seq)).astype(np.int32)
  tokens[:, 0] = 2
  mask = np.ones((batch, seq), np.float32)
  mask[:, 0] = 0
  positions = np.tile(np.arange(seq, dtype=np.int32), (batch, 1))
  return batching.Batch(tokens=tokens, positions=positions, input_mask=np.ones((batch, seq), bool),
                        mask=mask, weights=mask.copy())


def run_variant(variant: str, args, holder: list) -> dict:
  """holder = [params]; the last variant empties it so the state's copy is the only one."""
  import jax  # pylint: disable=g-import-not-at-top
  from sml_jax.models import registry  # pylint: disable=g-import-not-at-top
  from sml_jax.training import optimizer as opt  # pylint: disable=g-import-not-at-top
  from sml_jax.training import train_state as ts  # pylint: disable=g-import-not-at-top
  from sml_jax.training import train_step as tstep  # pylint: disable=g-import-not-at-top

  lora = variant == "lora"
  model = registry.build_model(args.model, lora_rank=args.lora_rank if lora else None)
  ocfg = opt.OptimizerConfig(learning_rate=1e-5, warmup_steps=0, total_steps=1000)
  tx = opt.make_optimizer(ocfg)
  params = holder[0]
  state = ts.create_train_state(model, params, tx)
  n_params = ts.count_params(params)
  if variant == args.variants[-1]:
    holder.clear()
    del params
  cfg = tstep.TrainConfig(num_micro_batches=args.micro_batches, logits_chunk_size=args.chunk,
                          compute_dtype=args.compute_dtype)
  step = tstep.make_train_step(model, tx, cfg, schedule=opt.make_schedule(ocfg))
  batch = random_batch(args.batch, args.seq)

  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  n_trainable = ts.count_params(state.params)
  times, losses, peaks = [], [float(metrics["loss"])], []
  for _ in range(args.steps):
    before = measure_matmul_peak(args.peak_size, "bfloat16", repeats=2)
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    losses.append(float(metrics["loss"]))
    peaks.append(max(before, measure_matmul_peak(args.peak_size, "bfloat16", repeats=2)))
  # XLA's own account of the step's memory (arguments = state + batch; temporaries).
  mem = step.lower(state, batch).compile().memory_analysis()
  del state

  tokens = args.batch * args.seq
  mcfg = (model.model if lora else model).config
  n_lora = n_trainable if lora else 0
  flops = model_flops_per_token(mcfg, n_params, args.seq, n_lora, lora) * tokens
  step_s = statistics.median(times)
  return {
      # On a shared machine: each step's FLOP/s against the peak measured around that step.
      "mfu_vs_concurrent_peak": statistics.median(flops / t / p for t, p in zip(times, peaks)),
      "concurrent_peaks": peaks,
      "step_s": step_s, "step_s_min": min(times), "first_step_s": first,
      "tokens_per_step": tokens, "tokens_per_s": tokens / step_s,
      "model_flops_per_step": flops, "achieved_flops": flops / step_s,
      "trainable_params": n_trainable,
      "loss_first": losses[0], "loss_last": losses[-1],
      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
      "xla_argument_gb": mem.argument_size_in_bytes / 1e9 if mem else None,
      "xla_temp_gb": mem.temp_size_in_bytes / 1e9 if mem else None,
  }


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  import jax  # pylint: disable=g-import-not-at-top
  from sml_jax.models import registry  # pylint: disable=g-import-not-at-top

  peak = measure_matmul_peak(args.peak_size, "bfloat16")
  peak_f32 = measure_matmul_peak(args.peak_size, "float32")
  print(f"measured matmul peak ({args.peak_size}^3, {jax.device_count()} {jax.default_backend()} "
        f"device(s)): bf16 {peak / 1e9:.1f} GFLOP/s, f32 {peak_f32 / 1e9:.1f} GFLOP/s", flush=True)
  holder = [registry.load_params(args.model)]
  results = {}
  for variant in args.variants:
    r = results[variant] = run_variant(variant, args, holder)
    peak = max([peak] + r["concurrent_peaks"])  # The machine's best so far.
    r["mfu"] = r["achieved_flops"] / peak
    print(f"{variant:>5}: {args.batch}x{args.seq} tokens, step {r['step_s']:.2f} s "
          f"(first {r['first_step_s']:.1f} s incl. compile), {r['tokens_per_s']:.1f} tokens/s, "
          f"{r['achieved_flops'] / 1e9:.1f} GFLOP/s, MFU {100 * r['mfu']:.1f}% of the bf16 peak "
          f"({peak / 1e9:.1f} GFLOP/s; {100 * r['mfu_vs_concurrent_peak']:.1f}% of the peak "
          f"measured around each step); memory: peak RSS {r['peak_rss_gb']:.1f} GB, XLA "
          f"arguments {r['xla_argument_gb']:.2f} GB + temporaries {r['xla_temp_gb']:.2f} GB; "
          f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}", flush=True)
    if not all(map(lambda x: x == x, (r["loss_first"], r["loss_last"]))):  # NaN check
      raise RuntimeError(f"{variant}: the loss is NaN.")
  for r in results.values():  # Against the best peak of the whole run.
    r["mfu"] = r["achieved_flops"] / peak
  out = {
      "benchmark": "train", "model": args.model, "full": args.full, "batch": args.batch,
      "seq": args.seq,
      "compute_dtype": args.compute_dtype, "micro_batches": args.micro_batches,
      "peak_flops": peak, "peak_flops_f32": peak_f32,
      "tokens_per_s": {v: r["tokens_per_s"] for v, r in results.items()},
      "mfu": {v: r["mfu"] for v, r in results.items()},
      "mfu_vs_concurrent_peak": {v: r["mfu_vs_concurrent_peak"] for v, r in results.items()},
      "achieved_flops": {v: r["achieved_flops"] for v, r in results.items()},
      "variants": results,
  }
  if args.json:
    print(json.dumps(out))
  return out


if __name__ == "__main__":
  from sml_jax import quiet  # pylint: disable=g-import-not-at-top
  quiet.install()
  main()
