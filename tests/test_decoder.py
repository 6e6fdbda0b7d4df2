"""Numerics against transformers (golden fixtures made by tests/fixtures/make_golden.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dgpo_jax.models import hf_io, registry
from dgpo_jax.models.decoder import Decoder, ValueModel, init_cache
from conftest import GOLDEN


def _golden(name):
  d = os.path.join(GOLDEN, name)
  return d, np.load(f"{d}/inputs.npy"), np.load(f"{d}/mask.npy"), np.load(f"{d}/logits.npy")


@pytest.mark.parametrize("name,attn_chunk", [("qwen2", 128), ("llama", 128), ("llama", 16)])
def test_logits_match_transformers(name, attn_chunk):
  d, ids, mask, want = _golden(name)
  cfg, params = hf_io.load_hf_params(d)
  cfg = cfg.replace(attn_chunk=attn_chunk)  # 16: 40 tokens in three causal query blocks
  graphdef, params = registry.place_params(cfg, params)
  got, _ = nnx.merge(graphdef, params)(jnp.asarray(ids), valid_bt=jnp.asarray(mask))
  err = np.abs(np.asarray(got) - want)[mask.astype(bool)].max()
  assert err <= 1e-4, err


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_cached_forward_equals_full_forward(name):
  d, ids, mask, want = _golden(name)
  cfg, params = hf_io.load_hf_params(d)
  model = nnx.merge(*registry.place_params(cfg, params))
  n = int(mask[0].sum())
  row = jnp.asarray(ids[:1, :n])
  cache = init_cache(cfg, 1, 64)
  chunks, logits = [(0, 13), (13, 14), (14, 30), (30, n)], []
  for a, b in chunks:
    out, cache = model(row[:, a:b], jnp.arange(a, b)[None], cache=cache)
    logits.append(np.asarray(out))
  assert np.abs(np.concatenate(logits, 1) - want[:1, :n]).max() <= 1e-4


def test_bfloat16_compute_is_close(tiny_model):
  cfg, (g, params) = tiny_model("tiny-qwen2")
  tokens = jnp.arange(24).reshape(2, 12) % cfg.vocab_size
  f32 = nnx.merge(g, params)(tokens)[0]
  g16, _ = nnx.split(Decoder(cfg.replace(dtype="bfloat16", param_dtype="bfloat16"),
                             rngs=nnx.Rngs(0)))
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  bf = nnx.merge(g16, p16)(tokens)[0]
  assert bf.dtype == jnp.float32  # logits are always f32
  assert np.abs(np.asarray(bf) - np.asarray(f32)).max() < 0.05


def test_value_model_shapes_and_trunk_init(tiny_model):
  cfg, (g, params) = tiny_model()
  vm = ValueModel(cfg, rngs=nnx.Rngs(1))
  vm.trunk = nnx.merge(g, params)  # critic initialized from the student trunk
  v = vm(jnp.ones((3, 7), jnp.int32))
  assert v.shape == (3, 7) and v.dtype == jnp.float32


def test_every_param_has_logical_axes(tiny_model):
  for name in ("tiny-llama", "tiny-qwen2"):
    cfg, _ = tiny_model(name)
    _, abs_state = registry.abstract_state(cfg)
    leaves = jax.tree.leaves(abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    for v in leaves:
      axes = v.get_metadata().get("axes")
      assert axes is not None and len(axes) == len(v.get_value().shape)


def test_remat_gives_same_grads(tiny_model):
  cfg, (g, params) = tiny_model()
  g2, _ = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0), remat=True))
  tokens = jnp.arange(20).reshape(2, 10)
  loss = lambda gd: jax.grad(lambda p: nnx.merge(gd, p)(tokens)[0].std())(params)
  a, b = loss(g), loss(g2)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.slow
def test_causal_blocks_and_unrolled_layers_give_the_same_logits_and_grads(tiny_model):
  """Query blocks (attn_chunk) skip masked keys and the unrolled layer stack (scan_unroll)
  compiles differently; neither may change the numbers (right-padded rows included)."""
  cfg, (g, params) = tiny_model()
  tokens = (jnp.arange(2 * 96).reshape(2, 96) * 7) % cfg.vocab_size
  valid = jnp.arange(96)[None] < jnp.array([[96], [61]])
  w = jax.random.normal(jax.random.key(3), (2, 96, cfg.vocab_size))

  def run(**kw):
    gd, _ = nnx.split(Decoder(cfg.replace(**kw), rngs=nnx.Rngs(0)))
    f = lambda p: nnx.merge(gd, p)(tokens, valid_bt=valid)[0]
    (v, logits), g = jax.value_and_grad(lambda p: ((f(p) * w * valid[..., None]).sum(), f(p)),
                                        has_aux=True)(params)
    return v, g, logits

  v0, g0, l0 = run(attn_chunk=0)
  for kw in (dict(attn_chunk=48), dict(attn_chunk=40, scan_unroll=cfg.n_layers)):
    v1, g1, l1 = run(**kw)
    np.testing.assert_allclose(l1, l0, atol=1e-5)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):  # f32 sums over 192 rows
      np.testing.assert_allclose(x, y, atol=1e-5 * float(np.abs(y).max()))
