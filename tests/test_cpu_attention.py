"""The fused CPU causal attention (dgpo_jax/models/cpu_attention.cc) against XLA's attention:
outputs and gradients, padding, query blocks' tails, and the decoder's use of it."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, cpu_env
from flax import nnx

from dgpo_jax.models import config as model_config
from dgpo_jax.models import cpu_attention, cpu_decode, decoder
from dgpo_jax.utils.errors import DgpoError

needs_kernels = pytest.mark.skipif(
    not cpu_decode.available(), reason=f"kernels unavailable: {cpu_decode.unavailable_reason()}")


def _reference(q, k, v, valid, scale):
  """Causal grouped-query attention in float64 NumPy: query i over keys j <= i with valid j."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  B, T, H, _ = q.shape
  G = H // k.shape[2]
  kk, vv = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
  s = np.einsum("bihd,bjhd->bhij", q, kk) * scale
  mask = np.tril(np.ones((T, T), bool))[None, None] & (np.asarray(valid)[:, None, None, :] > 0)
  s = np.where(mask, s, -np.inf)
  with np.errstate(invalid="ignore"):  # rows with no key to attend: NaN, never compared
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhij,bjhd->bihd", p / p.sum(-1, keepdims=True), vv)


def _inputs(B, T, H, KV, hd, seed=0):
  r = np.random.default_rng(seed)
  q = r.standard_normal((B, T, H, hd)).astype(np.float32)
  k = r.standard_normal((B, T, KV, hd)).astype(np.float32)
  v = r.standard_normal((B, T, KV, hd)).astype(np.float32)
  valid = np.ones((B, T), np.int32)
  valid[0, T - 5:] = 0  # right padding, as in training batches
  return q, k, v, valid


@needs_kernels
@pytest.mark.parametrize("shape", [(2, 37, 4, 2, 12), (1, 70, 4, 2, 32), (2, 16, 2, 1, 8),
                                   (1, 3, 4, 4, 16)])
def test_matches_reference_and_xla_gradients(shape):
  q, k, v, valid = _inputs(*shape)
  scale = 1.0 / np.sqrt(shape[-1])
  out = np.asarray(cpu_attention.causal_attention(q, k, v, valid, scale))
  real = valid > 0  # padding queries: zeros where a whole block of them is skipped
  np.testing.assert_allclose(out[real], _reference(q, k, v, valid, scale)[real], atol=2e-6)

  cfg = model_config.preset("tiny-llama", n_heads=shape[2], n_kv_heads=shape[3],
                            head_dim=shape[4], attn_chunk=16)
  pos = jnp.broadcast_to(jnp.arange(shape[1]), shape[:2])
  segs = lambda kk, vv: [(kk, vv, pos, jnp.asarray(valid, bool))]
  xla = lambda q, k, v: decoder._xla_attention(cfg, q, k, v, pos, segs, True, scale)
  # no loss on padding queries, as in training: their cotangent is zero
  w = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32) * real[..., None,
                                                                                    None]
  grads = lambda fn: jax.grad(lambda *a: (fn(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads(lambda q, k, v: cpu_attention.causal_attention(q, k, v, valid,
                                                                             scale)),
                       grads(xla)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_queries_without_keys_get_zeros():
  """Left padding: the first queries see only padding keys; they output zeros and pass no
  gradient, and the real queries match the reference."""
  q, k, v, _ = _inputs(1, 20, 4, 2, 12)
  valid = np.ones((1, 20), np.int32)
  valid[0, :6] = 0
  scale = 0.3
  out = np.asarray(cpu_attention.causal_attention(q, k, v, valid, scale))
  assert np.all(out[0, :6] == 0)
  np.testing.assert_allclose(out[:, 6:], _reference(q, k, v, valid, scale)[:, 6:], atol=2e-6)
  gq, gk, gv = jax.grad(lambda q, k, v: cpu_attention.causal_attention(q, k, v, valid,
                                                                       scale).sum(),
                        argnums=(0, 1, 2))(q, k, v)
  assert np.all(np.asarray(gq)[0, :6] == 0)
  assert np.all(np.asarray(gk)[0, :6] == 0) and np.all(np.asarray(gv)[0, :6] == 0)
  assert np.all(np.isfinite(gq)) and np.all(np.isfinite(gk))


@needs_kernels
def test_padding_queries_are_skipped_without_changing_real_gradients():
  """Right padding: whole blocks of padding queries output zeros and pass no gradient; the
  real queries' outputs and every gradient are bit for bit those of the same batch without
  padding queries' blocks (the padding keys are masked either way)."""
  q, k, v, _ = _inputs(1, 29, 4, 2, 12)
  valid = np.ones((1, 29), np.int32)
  valid[0, 17:] = 0  # queries 17-19 share a block with real ones; 20-28 are skipped
  scale = 0.3
  out = np.asarray(cpu_attention.causal_attention(q, k, v, valid, scale))
  assert np.all(out[0, 20:] == 0) and np.any(out[0, 17:20] != 0)
  np.testing.assert_allclose(out[:, :17], _reference(q, k, v, valid, scale)[:, :17], atol=2e-6)
  w = np.random.default_rng(2).standard_normal(out.shape).astype(np.float32)
  w[0, 17:] = 0
  f = lambda n: jax.grad(lambda q, k, v: (cpu_attention.causal_attention(
      q[:, :n], k[:, :n], v[:, :n], valid[:, :n], scale) * w[:, :n]).sum(),
                         argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(f(29), f(20)):  # 20: no skipped block
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert np.all(np.asarray(f(29)[0])[0, 17:] == 0)


@needs_kernels
def test_decoder_uses_kernel_with_same_logits_and_gradients(monkeypatch):
  # The suite runs on 8 host devices, where the decoder would fall back; allow the kernel.
  monkeypatch.setattr(cpu_attention, "usable", lambda: True)
  base = model_config.preset("tiny-llama", attn_chunk=8, scan_unroll=2)
  tokens = np.random.default_rng(0).integers(3, base.vocab_size, (2, 30)).astype(np.int32)
  valid = np.ones((2, 30), np.int32)
  valid[1, 24:] = 0

  def loss_and_grads(cfg):
    model = decoder.Decoder(cfg, rngs=nnx.Rngs(0))
    gd, params = nnx.split(model)

    def loss(p):
      h, _ = nnx.merge(gd, p).hidden(tokens, valid_bt=valid)
      return (h[valid > 0] ** 2).mean()

    return jax.value_and_grad(loss)(params)

  (l_x, g_x), (l_k, g_k) = (loss_and_grads(base.replace(attn_impl=i))
                            for i in ("xla", "cpu_kernel"))
  np.testing.assert_allclose(l_k, l_x, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_k), jax.tree.leaves(g_x)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_several_devices_fall_back_to_xla():
  if jax.device_count() == 1:
    pytest.skip("needs several devices (the suite runs on 8 host devices)")
  assert not cpu_attention.usable()


def test_unknown_attn_impl_is_a_config_error():
  with pytest.raises(DgpoError, match="attn_impl"):
    model_config.preset("tiny-llama", attn_impl="flash")


@needs_kernels
@pytest.mark.slow
def test_benchmark_times_both_paths(tmp_path):
  """benchmarks.attention on one device: both attention paths and both update steps timed,
  ratios from the same run."""
  out = tmp_path / "attention.json"
  r = subprocess.run([sys.executable, "-m", "benchmarks.attention", "--widths=32",
                      "--repeats=1", f"--out={out}"], cwd=ROOT, env=cpu_env(1),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.load(open(out))["results"]
  assert [x["model"] for x in rows] == ["teacher_128x4x384", "student_48x2x144"]
  for x in rows:
    assert x["head_dim"] == 16 and x["width"] == 32
    assert all(t > 0 for t in (*x["attention_fwd_bwd_s"].values(), *x["update_step_s"].values()))
    assert x["kernel_fwd_bwd_right_padded_s"] > 0 and 0.5 < x["right_padded_real_share"] < 1
    assert x["update_step_kernel_over_xla"] == pytest.approx(
        x["update_step_s"]["cpu_kernel"] / x["update_step_s"]["xla"])
