import jax
import numpy as np
import pytest

from dgpo_jax.models.sampler import Sampler, SamplingParams, sample_logits, stop_table
from dgpo_jax.utils.errors import DgpoError

GREEDY = SamplingParams(greedy=True)


@pytest.fixture
def sampler(tiny_model):
  cfg, (g, params) = tiny_model("tiny-qwen2")
  return Sampler(g, params, cache_size=128)


def _prompts(n=(5, 17, 9, 1), seed=0):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(3, 500, size=k)) for k in n]


def test_batched_with_padding_equals_one_by_one(sampler):
  prompts = _prompts()
  batched = sampler.generate(prompts, 20)
  for i, p in enumerate(prompts):
    single = sampler.generate([p], 20)
    np.testing.assert_array_equal(single.tokens[0], batched.tokens[i])
    np.testing.assert_allclose(single.logprobs[0], batched.logprobs[i], atol=1e-5)


def test_append_to_live_cache_equals_reprefill(sampler):
  prompts = _prompts()
  st = sampler.prefill(prompts)
  st, first = sampler.decode(st, 6, jax.random.key(0), GREEDY)
  obs = [[7, 8, 9], [], [10, 11, 12, 13, 14, 15, 16, 17, 18], [4]]
  st = sampler.append(st, obs)
  _, second = sampler.decode(st, 7, jax.random.key(0), GREEDY)
  full = [p + first.tokens[i, :6].tolist() + obs[i] for i, p in enumerate(prompts)]
  ref = sampler.generate(full, 7)
  np.testing.assert_array_equal(ref.tokens, second.tokens)
  np.testing.assert_allclose(ref.logprobs, second.logprobs, atol=1e-5)


def test_stop_sequences_end_rows_in_token_space(sampler):
  prompts = _prompts()
  free = sampler.generate(prompts, 16)
  stop = free.tokens[2, 4:6].tolist()  # a 2-token sequence row 2 produces at step 5
  res = sampler.generate(prompts, 16, stop_seqs=[[10**6], stop])
  assert res.stop_index[2] == 1
  assert res.num_tokens[2] <= 6
  n = res.num_tokens[2]
  assert res.tokens[2, n - 2:n].tolist() == stop
  np.testing.assert_array_equal(res.tokens[2, :n], free.tokens[2, :n])
  assert (res.tokens[2, n:] == sampler.pad_id).all()
  assert (res.logprobs[2, n:] == 0).all()


def test_inactive_rows_are_untouched(sampler):
  prompts = _prompts()
  st = sampler.prefill(prompts)
  st2, res = sampler.decode(st, 5, jax.random.key(0), GREEDY, active=np.array([1, 0, 1, 0]))
  assert res.num_tokens.tolist() == [5, 0, 5, 0]
  assert np.asarray(st2.lengths).tolist() == [10, 17, 14, 1]


def test_sampling_respects_top_p_and_seed():
  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4096, np.float32))
  toks, logp = sample_logits(logits, jax.random.key(0), SamplingParams(top_p=0.7))
  toks = np.asarray(toks)
  assert set(toks.tolist()) == {0, 1}  # 0.5 + 0.3 ≥ 0.7: token 2 and 3 are cut
  np.testing.assert_allclose(np.asarray(logp), np.log([0.5, 0.3])[toks], rtol=1e-5)
  again, _ = sample_logits(logits, jax.random.key(0), SamplingParams(top_p=0.7))
  np.testing.assert_array_equal(toks, np.asarray(again))
  freq = (toks == 0).mean()
  assert abs(freq - 0.5 / 0.8) < 0.03


def test_temperature_sampling_is_reproducible(sampler):
  sp = SamplingParams(temperature=1.0)
  a = sampler.generate(_prompts(), 10, jax.random.key(3), sp)
  b = sampler.generate(_prompts(), 10, jax.random.key(3), sp)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.logprobs < 0).all()


def test_cache_overflow_is_a_clear_error(sampler):
  st = sampler.prefill([[1] * 120])
  with pytest.raises(DgpoError, match="row 0 would hold 130 tokens, cache size is 128"):
    sampler.append(st, [[2] * 10])
  _, res = sampler.decode(st, 20, jax.random.key(0), GREEDY)
  assert res.num_tokens[0] == 8  # stops when the cache is full


def test_stop_table_right_aligns():
  table, lens = stop_table([[5], [7, 8, 9]])
  assert table.tolist() == [[-1, -1, 5], [7, 8, 9]] and lens.tolist() == [1, 3]


def test_samplers_of_one_model_share_their_programs(tiny_model):
  # Each evaluation and RL step makes a new Sampler; its programs must not be traced and
  # fetched again for every one (they were, and that cost a later run over a minute).
  cfg, (g, params) = tiny_model("tiny-qwen2")
  a, b = Sampler(g, params, cache_size=128), Sampler(g, params, cache_size=128)
  assert a._programs is b._programs
  assert Sampler(g, params, cache_size=64)._programs is not a._programs
  prompts = _prompts()
  np.testing.assert_array_equal(a.generate(prompts, 12).tokens, b.generate(prompts, 12).tokens)


def test_put_rows_writes_back_only_the_real_rows(sampler):
  prompts = _prompts((5, 17, 9, 1, 3))
  st = sampler.prefill(prompts)
  before = jax.tree.map(np.asarray, st)
  sub, idx = sampler.take_rows(st, [3, 1, 4])  # padded to 4 rows: [3, 1, 4, 3]
  assert idx.tolist() == [3, 1, 4, 3]
  sub, _ = sampler.decode(sub, 5, jax.random.key(0), GREEDY,
                          active=np.array([True, True, True, False]))
  after = jax.tree.map(np.asarray, sampler.put_rows(st, idx, 3, sub))
  sub = jax.tree.map(np.asarray, sub)
  np.testing.assert_array_equal(after.lengths, before.lengths + np.array([0, 5, 0, 5, 5]))
  for r, s in ((3, 0), (1, 1), (4, 2)):  # the padding row (a copy of row 3) is dropped
    np.testing.assert_array_equal(after.last_logits[r], sub.last_logits[s])
    np.testing.assert_array_equal(after.cache["k"][:, r], sub.cache["k"][:, s])
  for r in (0, 2):
    np.testing.assert_array_equal(after.cache["k"][:, r], before.cache["k"][:, r])
    np.testing.assert_array_equal(after.last_logits[r], before.last_logits[r])
