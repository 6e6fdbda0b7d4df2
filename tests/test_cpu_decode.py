"""The CPU decode kernels (dgpo_jax/models/cpu_decode.cc) against float64 references, and the
sampler on them against the sampler on XLA's dots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgpo_jax.models import cpu_decode
from dgpo_jax.models.sampler import Sampler, SamplingParams

pytestmark = pytest.mark.skipif(not cpu_decode.available(),
                                reason=f"kernels unavailable: {cpu_decode.unavailable_reason()}")


@pytest.mark.parametrize("M", [1, 3, 8, 11])
def test_packed_matmul_equals_float64(M):
  rng = np.random.default_rng(M)
  K, N, L = 37, 101, 3  # K not a multiple of the vector width, N not of the panel width
  x = rng.standard_normal((M, K)).astype(np.float32)
  w = rng.standard_normal((L, K, N)).astype(np.float32)
  packed = jax.jit(cpu_decode.pack)(w)
  assert packed.shape == (L, 3, K, cpu_decode.PANEL)
  for layer in (0, 2):
    got = jax.jit(cpu_decode.matmul_packed, static_argnums=2)(x, packed, N, layer)
    ref = x.astype(np.float64) @ w[layer].astype(np.float64)
    np.testing.assert_allclose(np.asarray(got), ref, atol=2e-5, rtol=1e-5)
  # an unstacked [NP, K, PANEL] weight is layer 0
  got = cpu_decode.matmul_packed(x, cpu_decode.pack(w[1]), N)
  np.testing.assert_allclose(np.asarray(got), x.astype(np.float64) @ w[1], atol=2e-5, rtol=1e-5)


def test_packed_matmul_rejects_a_bad_layer_index():
  w = cpu_decode.pack(jnp.ones((2, 8, 48)))
  with pytest.raises(Exception, match="layer index out of range"):
    jax.block_until_ready(cpu_decode.matmul_packed(jnp.ones((2, 8)), w, 48, 2))


def test_packed_matmul_returns_only_the_columns_asked_for():
  w = np.arange(8 * 200, dtype=np.float32).reshape(8, 200) / 100
  x = np.ones((3, 8), np.float32)
  got = cpu_decode.matmul_packed(x, cpu_decode.pack(w), 30)  # 5 panels packed, 1 read
  np.testing.assert_allclose(np.asarray(got), x @ w[:, :30], rtol=1e-6)


def test_decode_attention_rejects_mismatched_shapes():
  q, kv = jnp.ones((2, 4, 8)), jnp.ones((2, 2, 8))
  cache = jnp.ones((1, 2, 2, 16, 8))
  with pytest.raises(Exception, match="expected k_new, v_new"):
    jax.block_until_ready(cpu_decode.decode_attention(q, kv, jnp.ones((2, 2, 4)), cache, cache,
                                                      0, jnp.zeros(2, jnp.int32), 1.0))


def test_decode_attention_equals_float64():
  rng = np.random.default_rng(0)
  L, B, H, KV, S, hd = 2, 5, 6, 2, 24, 20
  q = rng.standard_normal((B, H, hd)).astype(np.float32)
  kn, vn = (rng.standard_normal((B, KV, hd)).astype(np.float32) for _ in range(2))
  ck, cv = (rng.standard_normal((L, B, KV, S, hd)).astype(np.float32) for _ in range(2))
  lengths = np.array([0, 5, S, 17, S + 9], np.int32)  # empty, partial, full, over-full rows
  got = np.asarray(cpu_decode.decode_attention(q, kn, vn, ck, cv, 1, lengths, 0.3))
  G = H // KV
  for b in range(B):
    n = min(int(lengths[b]), S)
    for h in range(H):
      keys = np.concatenate([ck[1, b, h // G, :n], kn[b, h // G][None]]).astype(np.float64)
      vals = np.concatenate([cv[1, b, h // G, :n], vn[b, h // G][None]]).astype(np.float64)
      s = keys @ q[b, h] * 0.3
      p = np.exp(s - s.max())
      np.testing.assert_allclose(got[b, h], (p / p.sum()) @ vals, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_sampler_on_kernels_equals_sampler_on_xla(tiny_model, preset):
  """Greedy and sampled decoding, with a live-cache append in between, give the same tokens
  on the kernels as on XLA's dots (q/k/v biases, tied and untied heads included)."""
  cfg, (g, params) = tiny_model(preset)
  fast = Sampler(g, params, 96, cpu_kernels=True)
  slow = Sampler(g, params, 96, cpu_kernels=False)
  assert fast.cpu_kernels and not slow.cpu_kernels
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, cfg.vocab_size, int(n)).tolist() for n in (5, 17, 9, 1, 30)]
  for sp in (SamplingParams(greedy=True), SamplingParams(temperature=1.0, top_p=0.9)):
    results = []
    for s in (fast, slow):
      st, a = s.decode(s.prefill(prompts), 12, jax.random.key(3), sp)
      st = s.append(st, [[7, 8], [], [9] * 11, [4], [5, 6, 7]])
      _, b = s.decode(st, 9, jax.random.key(4), sp)
      results.append((a, b))
    for x, y in zip(*results):
      np.testing.assert_array_equal(x.tokens, y.tokens)
      np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)


def test_new_params_are_packed_again(tiny_model):
  cfg, (g, params) = tiny_model("tiny-llama")
  s = Sampler(g, params, 64, cpu_kernels=True)
  first = s.packed()
  assert s.packed() is first  # made once per params
  s.params = jax.tree.map(lambda a: a * 1.5, params)
  again = s.packed()
  assert again is not first
  np.testing.assert_allclose(again["head"], first["head"] * 1.5, rtol=1e-6)


def test_kernels_stay_off_where_they_do_not_apply(tiny_model):
  cfg, (g, params) = tiny_model("tiny-llama")
  assert Sampler(g, params, 64).cpu_kernels  # float32 on one CPU device: on by default
  assert Sampler(g, params, 64, cpu_kernels=False).packed() is None
  assert not Sampler(g, params, 64, row_sharding=lambda rows, ndim, axis: None).cpu_kernels
