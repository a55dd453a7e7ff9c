"""sml_jax.training: the one compiled train step and everything around it (import-light).

    batching.make_batch(examples, max_len, batch_multiple=M)   Example(ids, roles, weight, ...)
        -> Batch(tokens, positions, input_mask, mask, weights, old_logprobs?, ref_logprobs?)
    advantages.grpo_advantages(rewards, group_size, eps)       GRPO, normalised per group
    optimizer.make_optimizer(OptimizerConfig(...))             AdamW, warmup + cosine, clipping
    train_state.create_train_state(model, params, tx, seed)    full finetune or LoRA (split)
    train_step.make_train_step(model, tx, TrainConfig(...), mesh=...)
        -> step(state, batch) -> (state, metrics)              SFT and GRPO, one jitted step
    train_step.make_logprob_fn(model, cfg)(params, batch)      reference / old log-probs [B, T]
    checkpointing.Checkpointer(workdir, every, keep)           orbax: save / restore_latest, SIGTERM
    metrics.MetricsWriter(workdir, total_steps, resume_step)   metrics.jsonl + TensorBoard + tqdm

Formulas: `losses.py` (per-token losses, normalisers), `logprobs.py` (fused unembedding).
Token ids and roles come from `sml_jax.models.tokens`; nothing here imports `sml_jax.dialogue`.
The stage loop and conversations -> examples live above the dialogue layer, in `sml_jax/stages/`.
"""
