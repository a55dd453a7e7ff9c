"""The multi-turn sampler on the `tiny` model (float32): reference equality, multi-turn, log-probs,
sampling options, errors. The real 270M is in test_sampler_270m.py, sharding in
test_sampler_sharding.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sml_jax.sampling import ChatState, Sampler, TurnOutput
from sml_jax.sampling import decode
from sml_jax.sampling import forward as fwd

STOPS = (1, 106, 50)  # gm.text.Sampler's end tokens: <eos>, <end_of_turn>, tool response.
TEXTS = ["def fibonacci(n):", "The Eiffel Tower is in", "Hi", "1, 2, 3, 4, 5, 6, 7, 8, 9"]


@pytest.fixture(scope="module")
def setup(tiny, tokenizer):
  model, params = tiny
  prompts = [list(tokenizer.encode(t, add_bos=True)) for t in TEXTS]
  return model, params, prompts


def reference_tokens(model, params, tokenizer, texts, n, cache_length=256):
  from gemma import gm
  ref = gm.text.Sampler(model=model, params=params, tokenizer=tokenizer,
                        cache_length=cache_length)
  out = ref.sample(texts, max_new_tokens=n, return_state=True)
  return np.asarray(out.state.predicted_tokens)[:, :n]


def forward_logprobs(model, params, context, generated, temperature=1.0):
  """Teacher-forced log-probs of `generated` after `context` (gemma's own forward pass)."""
  seq = jnp.asarray([list(context) + list(generated)])
  logits = model.apply({"params": params}, tokens=seq).logits[0].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits / temperature, axis=-1)
  pos = np.arange(len(context) - 1, len(context) + len(generated) - 1)
  return np.asarray(logp[pos, np.asarray(generated)])


def test_greedy_matches_gm_sampler(setup, tokenizer):
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=STOPS)
  out = sampler.generate(params, prompts, max_new_tokens=10)
  assert isinstance(out, TurnOutput)
  ref = reference_tokens(model, params, tokenizer, TEXTS, 10)
  for i in range(len(TEXTS)):
    assert out.tokens[i].tolist() == ref[i, :len(out.tokens[i])].tolist()
    assert len(out.tokens[i]) == 10 and not out.stopped[i]
  one = sampler.generate(params, prompts[:1], max_new_tokens=10)
  ref1 = reference_tokens(model, params, tokenizer, TEXTS[:1], 10)
  assert one.tokens[0].tolist() == ref1[0].tolist()


def test_multi_turn_equals_fresh_prefill(setup):
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=STOPS)
  state = sampler.start(params, prompts)
  assert isinstance(state, ChatState)
  np.testing.assert_array_equal(state.lengths, [len(p) for p in prompts])
  state, first = sampler.sample(params, state, max_new_tokens=6)
  segments = [[106, 107, 105, 2364, 107], [], [9, 8, 7], [106]]
  state = sampler.append(params, state, segments)
  state, second = sampler.sample(params, state, max_new_tokens=6)
  histories = [p + first.tokens[i].tolist() + segments[i] for i, p in enumerate(prompts)]
  fresh = sampler.generate(params, histories, max_new_tokens=6)
  for i in range(len(prompts)):
    assert second.tokens[i].tolist() == fresh.tokens[i].tolist()
    np.testing.assert_allclose(second.logprobs[i], fresh.logprobs[i], atol=1e-4)
    assert state.tokens(i).tolist() == histories[i] + second.tokens[i].tolist()


def test_shared_prompt_prefix_is_prefilled_once_with_the_same_result(setup, tokenizer):
  model, params, _ = setup
  demo = list(tokenizer.encode("Instructions shared by every row: answer briefly, then stop. " * 4,
                               add_bos=True))
  prompts = [demo + list(tokenizer.encode(t)) for t in TEXTS] + [demo[:40]]
  shared = Sampler(model, cache_length=512, dtype=jnp.float32, stop_tokens=STOPS)
  plain = Sampler(model, cache_length=512, dtype=jnp.float32, stop_tokens=STOPS,
                  min_shared_prefix=0)
  from sml_jax.sampling import sampler as sampler_lib
  assert sampler_lib._common_prefix_length(prompts) == 39  # The shortest prompt keeps 1 token.
  a_state = shared.start(params, prompts)
  b_state = plain.start(params, prompts)
  _, a = shared.sample(params, a_state, max_new_tokens=8)
  _, b = plain.sample(params, b_state, max_new_tokens=8)
  for i in range(len(prompts)):
    assert a.tokens[i].tolist() == b.tokens[i].tolist()
    np.testing.assert_allclose(a.logprobs[i], b.logprobs[i], atol=1e-4)


def test_inactive_rows_generate_nothing(setup):
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=STOPS)
  state = sampler.start(params, prompts)
  before = state.lengths.copy()
  state, out = sampler.sample(params, state, max_new_tokens=5,
                              active=np.array([True, False, True, False]))
  assert [len(t) for t in out.tokens] == [5, 0, 5, 0]
  assert [len(t) for t in out.logprobs] == [5, 0, 5, 0]
  np.testing.assert_array_equal(state.lengths, before + [5, 0, 5, 0])
  # The skipped rows continue exactly as if the turn had not happened.
  state, later = sampler.sample(params, state, max_new_tokens=5)
  alone = sampler.generate(params, [prompts[1], prompts[3]], max_new_tokens=5)
  assert later.tokens[1].tolist() == alone.tokens[0].tolist()
  assert later.tokens[3].tolist() == alone.tokens[1].tolist()


def renormalized_logprobs(logits, generated, temperature, top_k, top_p):
  """Log-probs of `generated` under the sampling distribution rebuilt from gemma's forward pass
  `logits` (N, V) at the generated positions (float64, by sorting): logits / temperature,
  restricted to the top-k tokens, then to the smallest set of most likely tokens holding `top_p`
  of that restricted mass, renormalized. Each generated token must lie in its step's kept set."""
  out = []
  for row, token in zip(np.asarray(logits, np.float64), generated):
    z = row / temperature
    keep = np.ones(z.shape, bool)
    if top_k:
      keep &= z >= np.sort(z)[-top_k]
    if top_p:
      masked = np.where(keep, z, -np.inf)
      order = np.argsort(-masked)
      p = np.exp(masked[order] - masked[order[0]])
      n = int(np.searchsorted(np.cumsum(p / p.sum()), top_p)) + 1
      nucleus = np.zeros_like(keep)
      nucleus[order[:n]] = True
      keep &= nucleus
    assert keep[token], f"token {token} sampled outside the top-k / top-p set"
    top = z[keep].max()
    out.append(z[token] - top - np.log(np.sum(np.exp(z[keep] - top))))
  return np.asarray(out)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, None, None), (0.7, None, None), (0.0, None, None),
    (0.8, 4, None), (1.0, None, 0.5), (0.7, 40, 0.9)])
def test_logprobs_match_teacher_forcing(setup, temperature, top_k, top_p):
  """With top-k / top-p the reference is the forward pass renormalized over the kept tokens
  (with the full softmax the truncated log-probs would be off by the dropped mass)."""
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=())
  out = sampler.generate(params, prompts[:2], max_new_tokens=8, temperature=temperature,
                         top_k=top_k, top_p=top_p, seed=3)
  for i in range(2):
    if top_k or top_p:
      generated = out.tokens[i].tolist()
      seq = jnp.asarray([prompts[i] + generated])
      logits = model.apply({"params": params}, tokens=seq).logits[0].astype(jnp.float32)
      logits = np.asarray(logits)[len(prompts[i]) - 1:-1]
      expected = renormalized_logprobs(logits, generated, temperature, top_k, top_p)
      full = np.asarray(jax.nn.log_softmax(logits / temperature, axis=-1))[
          np.arange(len(generated)), generated]
      assert np.all(out.logprobs[i] > full + 1e-3)  # Truncation moved mass onto what is kept.
    else:
      expected = forward_logprobs(model, params, prompts[i], out.tokens[i].tolist(),
                                  temperature=temperature or 1.0)
    np.testing.assert_allclose(out.logprobs[i], expected, atol=2e-3)


def test_top_k_top_p_restrict_the_distribution(setup):
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=())
  greedy = sampler.generate(params, prompts, max_new_tokens=6)
  top1 = sampler.generate(params, prompts, max_new_tokens=6, temperature=1.0, top_k=1, seed=5)
  tiny_p = sampler.generate(params, prompts, max_new_tokens=6, temperature=1.0, top_p=1e-6)
  for i in range(len(prompts)):
    assert top1.tokens[i].tolist() == greedy.tokens[i].tolist()
    assert tiny_p.tokens[i].tolist() == greedy.tokens[i].tolist()
    np.testing.assert_allclose(top1.logprobs[i], 0.0, atol=1e-5)   # a point mass
  k4 = sampler.generate(params, prompts[:1], max_new_tokens=6, temperature=1.0, top_k=4, seed=2)
  assert np.all(k4.logprobs[0] >= np.log(1 / 4) - 0.5)   # near-uniform tiny model over 4 tokens


@pytest.mark.parametrize("top_p", [None, 0.9])
def test_top_k_draws_the_token_the_whole_vocabulary_draw_would(top_p):
  """The top-k path works on the k candidates only; with the same uniforms it picks the token a
  whole-vocabulary inverse CDF over the masked logits picks (the definition), with its log-prob."""
  b, v, k = 64, 262_144, 40
  logits = jax.random.normal(jax.random.PRNGKey(0), (b, v)) * 4.0
  keys = jax.random.split(jax.random.PRNGKey(1), b)
  got, got_lp = decode.choose_tokens(decode.Policy(greedy=False, top_k=k, top_p=top_p is not None),
                                     logits, 0.7, top_p or 1.0, keys, jnp.float32)
  z = np.asarray(logits / 0.7, np.float64)
  z[z < np.sort(z, axis=-1)[:, -k:][:, :1]] = -np.inf
  if top_p is not None:   # smallest set of largest values with at least top_p of the mass
    w = np.exp(z - z.max(-1, keepdims=True))
    desc = -np.sort(-w, axis=-1)
    cut = desc[np.arange(b), (np.cumsum(desc, -1) < top_p * w.sum(-1, keepdims=True)).sum(-1)]
    z[w < cut[:, None]] = -np.inf
  w = np.exp(z - z.max(-1, keepdims=True))
  u = np.asarray(jax.vmap(jax.random.uniform)(keys), np.float64)
  want = (np.cumsum(w, -1) <= (u * w.sum(-1))[:, None]).sum(-1)
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_allclose(np.asarray(got_lp),
                             z[np.arange(b), want] - np.log(np.exp(z).sum(-1)), atol=1e-5)
  kept = np.isfinite(z).sum(-1)
  assert kept.max() == k if top_p is None else kept.min() < k   # not vacuous


def test_sampling_is_per_row_and_seeded(setup):
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=())
  a = sampler.generate(params, prompts, max_new_tokens=6, temperature=1.0, seed=11)
  b = sampler.generate(params, prompts, max_new_tokens=6, temperature=1.0, seed=11)
  c = sampler.generate(params, prompts, max_new_tokens=6, temperature=1.0, seed=12)
  assert all(x.tolist() == y.tolist() for x, y in zip(a.tokens, b.tokens))
  assert any(x.tolist() != y.tolist() for x, y in zip(a.tokens, c.tokens))
  # Row 0's draw does not depend on which other rows share the batch.
  alone = sampler.generate(params, prompts[:1], max_new_tokens=6, temperature=1.0, seed=11)
  assert alone.tokens[0].tolist() == a.tokens[0].tolist()


def test_stop_tokens_end_rows(setup):
  model, params, prompts = setup
  plain = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=())
  greedy = plain.generate(params, prompts, max_new_tokens=6)
  stop = int(greedy.tokens[0][2])
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=(stop,))
  out = sampler.generate(params, prompts, max_new_tokens=6)
  assert out.tokens[0].tolist() == greedy.tokens[0][:3].tolist()   # includes the stop token
  assert out.stopped[0]
  for i in range(1, len(prompts)):
    g = greedy.tokens[i].tolist()
    expected = g[:g.index(stop) + 1] if stop in g else g
    assert out.tokens[i].tolist() == expected
    assert out.stopped[i] == (stop in g)


def _first_line(tokens, line_end, blank):
  """Where a line stop ends a greedy row: at the first `line_end` token after a non-blank one."""
  wrote = False
  for k, t in enumerate(tokens):
    if t in line_end and wrote:
      return tokens[:k + 1]
    wrote |= t not in blank
  return tokens


def test_line_stop_ends_rows_at_their_first_line(setup):
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=())
  greedy = [g.tolist() for g in sampler.generate(params, prompts, max_new_tokens=8).tokens]
  t = greedy[0][2]
  # A line break after text ends the row; leading blanks (and line breaks) do not.
  for blank in [(t,), (greedy[0][0], greedy[0][1], t)]:
    stop = decode.LineStop(line_end=(t,), blank=blank)
    out = sampler.generate(params, prompts, max_new_tokens=8, line_stop=stop)
    for g, got in zip(greedy, out.tokens):
      assert got.tolist() == _first_line(g, (t,), blank)
    assert not out.stopped.any()  # Only stop tokens mark a turn as closed by the model.
  assert len(_first_line(greedy[0], (t,), (t,))) == 3


def test_compaction_when_shared_pointer_runs_out(setup):
  """Rows of very different lengths waste shared slots; a small cache forces compaction."""
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=64, dtype=jnp.float32, stop_tokens=())
  rows = [prompts[2], prompts[3]]
  state = sampler.start(params, rows)
  history = [list(r) for r in rows]
  for turn in range(4):
    state, out = sampler.sample(params, state, max_new_tokens=4, active=[True, turn % 2 == 0])
    segment = [[5, 6, 7, 8, 9, 10, 11][: 2 + turn], []]
    for i in range(2):
      history[i] += out.tokens[i].tolist() + segment[i]
    state = sampler.append(params, state, segment)
  assert [state.tokens(i).tolist() for i in range(2)] == history
  state, last = sampler.sample(params, state, max_new_tokens=4)
  fresh = sampler.generate(params, history, max_new_tokens=4)
  for i in range(2):
    assert last.tokens[i].tolist() == fresh.tokens[i].tolist()


def test_lora_params(tiny, setup):
  from sml_jax import models
  model, params, prompts = setup
  lora_model = models.build_model("tiny", lora_rank=4)
  lora_params = lora_model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  rng = np.random.default_rng(0)   # non-zero factors (LoRA's b starts at zero)
  lora_params = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.asarray(rng.normal(0, 0.2, x.shape), jnp.float32)
      if "lora" in jax.tree_util.keystr(p) else None, lora_params)
  lora_params = _merge_trees(params, lora_params)
  lora_params = jax.tree.map(lambda x: x.astype(jnp.float32), lora_params)
  sampler = Sampler(lora_model, cache_length=256, dtype=jnp.float32, stop_tokens=())
  out = sampler.generate(lora_params, prompts[:2], max_new_tokens=5, temperature=1.0, seed=1)
  for i in range(2):
    expected = forward_logprobs(lora_model, lora_params, prompts[i], out.tokens[i].tolist())
    np.testing.assert_allclose(out.logprobs[i], expected, atol=2e-3)


def _merge_trees(base, extra):
  if not isinstance(extra, dict):
    return base if extra is None else extra
  out = dict(base) if isinstance(base, dict) else {}
  for k, v in extra.items():
    merged = _merge_trees(out.get(k), v)
    if merged is not None:
      out[k] = merged
  return out


def test_new_params_do_not_recompile(setup):
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=())
  sampler.generate(params, prompts, max_new_tokens=4)
  size = decode.decode._cache_size()
  params2 = jax.tree.map(lambda x: x * 1.01, params)
  sampler.generate(params2, prompts, max_new_tokens=4)
  other = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=())   # e.g. teacher
  other.generate(params2, prompts, max_new_tokens=3)
  assert decode.decode._cache_size() == size


def test_errors(setup):
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=32, dtype=jnp.float32, stop_tokens=STOPS)
  with pytest.raises(ValueError, match="empty"):
    sampler.generate(params, [prompts[0], []], max_new_tokens=4)
  with pytest.raises(ValueError, match="non-empty"):
    sampler.generate(params, [], max_new_tokens=4)
  with pytest.raises(ValueError, match="cache_length"):
    sampler.generate(params, [list(range(2, 40))], max_new_tokens=4)
  with pytest.raises(ValueError, match="cache_length"):
    sampler.generate(params, [prompts[0]], max_new_tokens=30)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampler.generate(params, [prompts[0]], max_new_tokens=-1)
  with pytest.raises(ValueError, match="temperature"):
    sampler.generate(params, [prompts[0]], max_new_tokens=2, temperature=-1.0)
  with pytest.raises(ValueError, match="top_p"):
    sampler.generate(params, [prompts[0]], max_new_tokens=2, temperature=1.0, top_p=1.5)
  empty = sampler.generate(params, prompts, max_new_tokens=0)
  assert [len(t) for t in empty.tokens] == [0] * len(prompts) and not empty.stopped.any()
  state = sampler.start(params, [prompts[0]])
  with pytest.raises(ValueError, match="overflow"):
    sampler.append(params, state, [list(range(2, 40))])
  with pytest.raises(ValueError, match="overflow"):
    sampler.sample(params, state, max_new_tokens=40)
  with pytest.raises(ValueError, match="segments"):
    sampler.append(params, state, [[1], [2]])
  state2, _ = sampler.sample(params, state, max_new_tokens=2)
  with pytest.raises(ValueError, match="consumed"):
    sampler.sample(params, state, max_new_tokens=2)
  assert state2.lengths[0] == len(prompts[0]) + 2


def test_round_to_bfloat16_matches_the_convert():
  """Greedy ties are broken on bf16-rounded logits by bit arithmetic (the convert is slow on
  CPUs without bf16): it must round exactly like the convert, ties to even included."""
  x = jax.random.normal(jax.random.key(0), (100_000,), jnp.float32) * 30
  ties = (np.arange(1, 1001, dtype=np.uint32) << 16) | np.uint32(0x3F808000)  # exact halfway
  for v in (x, jnp.asarray(ties.view(np.float32)), -x):
    want = v.astype(jnp.bfloat16).astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(decode.round_to(v, jnp.bfloat16)), np.asarray(want))
  assert decode.round_to(x, jnp.float32) is x


def test_padding_is_compacted_away_instead_of_growing_the_cache(setup):
  """A row that is not talking leaves padding at every shared slot the others use; when the
  pointer runs out of capacity, compaction keeps the cache at a smaller capacity than growing
  would (decode steps attend over the whole capacity), and decoding is unchanged."""
  model, params, prompts = setup
  sampler = Sampler(model, cache_length=1024, dtype=jnp.float32, stop_tokens=())
  rows = [prompts[2], prompts[3]]
  state = sampler.start(params, rows)
  history = [list(r) for r in rows]
  capacities = []
  for turn in range(6):
    state, out = sampler.sample(params, state, max_new_tokens=40,
                                active=[turn % 2 == 0, turn % 2 == 1])
    for i in range(2):
      history[i] += out.tokens[i].tolist()
    capacities.append(state.cache.capacity)
  # The rows take turns: 6 x 40 shared slots would pass 256, but each row holds ~3 x 40 tokens.
  assert max(len(r) for r in rows) - 1 + 6 * 40 > 256
  assert max(len(h) for h in history) + 40 <= 256
  assert max(capacities) == 256, capacities
  assert [state.tokens(i).tolist() for i in range(2)] == history
  state, last = sampler.sample(params, state, max_new_tokens=4)
  fresh = sampler.generate(params, history, max_new_tokens=4)
  for i in range(2):
    assert last.tokens[i].tolist() == fresh.tokens[i].tolist()


def test_live_row_buckets():
  assert decode.live_row_buckets(8, 16) == ()
  assert decode.live_row_buckets(32, 0) == ()
  assert decode.live_row_buckets(16, 16) == (8,)
  assert decode.live_row_buckets(32, 16) == (8, 16)
  assert decode.live_row_buckets(48, 16) == (12, 24)
  assert decode.live_row_buckets(200, 16) == (13, 25, 50, 100)


def _assert_same_turns(a, b):
  """Same tokens; log-probs equal up to float rounding (a batch of other rows can round a
  matmul differently: up to ~3e-5 on the 270M's 48-row turn, with the same tokens)."""
  for x, y in zip(a.tokens, b.tokens):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(a.logprobs, b.logprobs):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def two_kv_heads():
  """A random 2-layer model with 2 kv heads (tiny and the 270M have one): K/V rows k * B + i."""
  import dataclasses
  from gemma import gm
  from sml_jax.models import registry
  model = gm.nn.Transformer(config=dataclasses.replace(registry.tiny_config(), num_heads=4,
                                                       num_kv_heads=2))
  return model, model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]


def _turn(model, params, rows, stops, live, active=None, **kw):
  """(output, pointer, cache arrays) of one turn after prefilling `rows`."""
  sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=stops,
                    live_rows_min_batch=live)
  assert sampler.live_rows_min_batch == live
  state, out = sampler.sample(params, sampler.start(params, rows), active=active, **kw)
  return out, state.pointer, jax.device_get(state.cache)


@pytest.mark.parametrize("kv", ["one", "two"])
@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (0.8, 5)])
def test_decoding_the_running_rows_alone_changes_no_row(setup, two_kv_heads, kv, temperature,
                                                         top_k):
  """32 rows that stop at different steps: once at most 16 (then 8) rows run, decoding goes on
  with those rows alone; every row gets the same tokens (and log-probs, up to rounding), and
  the cache the same pointer, valid slots, positions and keys / values where valid, as when
  every step computes all 32. With one kv head and with two (K/V rows k * B + i)."""
  model, params, prompts = setup
  if kv == "two":
    model, params = two_kv_heads
  rows = [p + [20 + i] for i in range(8) for p in prompts]
  kw = dict(max_new_tokens=8, temperature=temperature, top_k=top_k, seed=5)
  free, _, _ = _turn(model, params, rows, (), 0, **kw)
  # Stop tokens that end rows early and at different steps.
  stops = tuple({int(t[k]) for k, t in zip([1, 2, 3, 4, 5] * 4, free.tokens[::2])})
  # All 32 rows (the 16-row level runs), then 12 of them (16 rows, then 8).
  active = np.zeros(len(rows), bool)
  active[[0, 3, 7, 8, 11, 12, 19, 20, 24, 27, 30, 31]] = True
  for act in (None, active):
    (a, pa, ca), (b, pb, cb) = [_turn(model, params, rows, stops, m, active=act, **kw)
                                for m in (0, 16)]
    counts = np.asarray([len(t) for t in a.tokens])
    live = counts if act is None else counts[act]
    assert (live < 8).sum() >= len(live) - (16 if act is None else 8), counts  # levels ran
    _assert_same_turns(a, b)
    np.testing.assert_array_equal(a.stopped, b.stopped)
    assert pa == pb
    np.testing.assert_array_equal(ca.valid, cb.valid)
    np.testing.assert_array_equal(np.where(ca.valid, ca.pos, 0), np.where(cb.valid, cb.pos, 0))
    b_of, _ = fwd.rows_of(len(rows), model.config.num_kv_heads, ca.groups)
    valid = ca.valid[b_of][:, :, None]   # (B*K, C, 1): each K/V row's batch row
    for la, lb in zip(ca.layers, cb.layers):
      for x, y in ((la.keys, lb.keys), (la.values, lb.values)):
        np.testing.assert_allclose(np.where(valid, x, 0), np.where(valid, y, 0), atol=1e-5)
