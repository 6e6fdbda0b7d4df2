"""Pallas kernel for the forward statistics of `fused_kl.token_stats`.

One program per block of tokens; inside it, a loop over vocabulary chunks computes both
models' logits for the block from their hidden states and head weights, and folds them into
the online log-sum-exp statistics. The [N, V] logits never exist in memory. The structure
follows the GPU (Triton) lowering's rules: `pl.ds` slices of full-array refs in `fori_loop`s,
power-of-two tiles (the model dim zero-padded and contracted in slices), one output per
statistic. The backward pass is the chunked jnp one from `fused_kl`.

Tested in interpret mode on CPU (`interpret=True`) and compiled on an H100, where
tests/test_fused_kl.py passes (with float32 references); it is correct there but slow (86×
the naive step's time at the Qwen shapes): docs/fused_kl.md.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from dgpo_jax.utils import shapes
from dgpo_jax.rl import fused_kl

_HI = jax.lax.Precision.HIGHEST  # float32 dots, not TF32, on GPU: the stats match to 1e-5


_pow2 = functools.partial(shapes.pow2, minimum=1)  # the smallest power of two >= n


def _kernel(hs_ref, ws_ref, ht_ref, wt_ref, y_ref, *out_refs, chunk, nc, v, bs, bt):
  y = y_ref[...]
  b = y.shape[0]
  dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32, precision=_HI)

  def logits(h_ref, w_ref, bd, c):
    # Over the model dim in power-of-two slices (Triton's rule); zero-padded dims add 0.
    def step(d, z):
      return z + dot(h_ref[:, pl.ds(d * bd, bd)], w_ref[pl.ds(d * bd, bd), pl.ds(c * chunk, chunk)])
    return jax.lax.fori_loop(0, h_ref.shape[1] // bd, step, jnp.zeros((b, chunk), jnp.float32))

  def body(c, acc):
    ms, ls, as_, bs_, mt, lt, at, bt_, ys, yt = acc
    col = c * chunk + jax.lax.broadcasted_iota(jnp.int32, (b, chunk), 1)
    zs = jnp.where(col < v, logits(hs_ref, ws_ref, bs, c), fused_kl.NEG)
    zt = jnp.where(col < v, logits(ht_ref, wt_ref, bt, c), fused_kl.NEG)

    def fold(m, l, a, bb, z, other):
      m_new = jnp.maximum(m, z.max(-1))
      scale = jnp.exp(m - m_new)
      e = jnp.exp(z - m_new[:, None])
      return (m_new, l * scale + e.sum(-1), a * scale + (e * z).sum(-1),
              bb * scale + (e * other).sum(-1))

    ms, ls, as_, bs_ = fold(ms, ls, as_, bs_, zs, zt)
    mt, lt, at, bt_ = fold(mt, lt, at, bt_, zt, zs)
    hit = col == y[:, None]
    ys = ys + jnp.where(hit, zs, 0.0).sum(-1)
    yt = yt + jnp.where(hit, zt, 0.0).sum(-1)
    return ms, ls, as_, bs_, mt, lt, at, bt_, ys, yt

  neg, zero = jnp.full((b,), fused_kl.NEG, jnp.float32), jnp.zeros((b,), jnp.float32)
  ms, ls, as_, bs_, mt, lt, at, bt_, ys, yt = jax.lax.fori_loop(
      0, nc, body, (neg, zero, zero, zero, neg, zero, zero, zero, zero, zero))
  lse_s, lse_t = ms + jnp.log(ls), mt + jnp.log(lt)
  es_zs, es_zt, et_zt, et_zs = as_ / ls, bs_ / ls, at / lt, bt_ / lt
  rows = (ys - lse_s, yt - lse_t, (et_zt - lse_t) - (et_zs - lse_s),
          (es_zs - lse_s) - (es_zt - lse_t), lse_s - es_zs, lse_s, lse_t, es_zs, es_zt)
  for ref, row in zip(out_refs, rows):  # one output per statistic (Triton stacks 2 at most)
    ref[...] = row


def _forward(h_s, w_s, h_t, w_t, y, block, chunk, interpret):
  n, v = h_s.shape[0], w_s.shape[1]
  # Triton needs power-of-two tiles: blocks of tokens and vocabulary, and model-dim slices.
  block, chunk = min(_pow2(block), _pow2(n)), min(_pow2(chunk), _pow2(v))
  nb, nc = -(-n // block), -(-v // chunk)
  bs, bt = min(64, _pow2(h_s.shape[1])), min(64, _pow2(h_t.shape[1]))
  ds, dt = -(-h_s.shape[1] // bs) * bs, -(-h_t.shape[1] // bt) * bt
  hs = fused_kl._pad_to(fused_kl._pad_to(h_s, nb * block, 0), ds, 1)
  ht = fused_kl._pad_to(fused_kl._pad_to(h_t, nb * block, 0), dt, 1)
  yb = fused_kl._pad_to(y.astype(jnp.int32), nb * block, 0)
  ws = fused_kl._pad_to(fused_kl._pad_to(w_s, nc * chunk, 1), ds, 0)
  wt = fused_kl._pad_to(fused_kl._pad_to(w_t, nc * chunk, 1), dt, 0)
  full = lambda a: pl.BlockSpec(a.shape, lambda i: (0, 0))
  rows = pl.BlockSpec((block,), lambda i: (i,))
  out = pl.pallas_call(
      functools.partial(_kernel, chunk=chunk, nc=nc, v=v, bs=bs, bt=bt),
      grid=(nb,),
      in_specs=[pl.BlockSpec((block, ds), lambda i: (i, 0)), full(ws),
                pl.BlockSpec((block, dt), lambda i: (i, 0)), full(wt), rows],
      out_specs=[rows] * 9,
      out_shape=[jax.ShapeDtypeStruct((nb * block,), jnp.float32)] * 9,
      interpret=interpret,
  )(hs, ws, ht, wt, yb)
  out = [o[:n] for o in out]
  stats = {k: out[i] for i, k in enumerate(fused_kl.STATS)}
  return stats, tuple(out[5:9])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _stats(h_s, w_s, h_t, w_t, y, block, chunk, interpret):
  return _forward(h_s, w_s, h_t, w_t, y, block, chunk, interpret)[0]


def _fwd(h_s, w_s, h_t, w_t, y, block, chunk, interpret):
  stats, res = _forward(h_s, w_s, h_t, w_t, y, block, chunk, interpret)
  return stats, (h_s, w_s, h_t, w_t, y, res)


def _bwd(block, chunk, interpret, saved, g):
  return fused_kl._bwd(block, chunk, saved, g)


_stats.defvjp(_fwd, _bwd)


def token_stats(h_s, w_s, h_t, w_t, y, *, block: int = 128, chunk: int = 2048,
                interpret: bool = False):
  """`fused_kl.token_stats` with the forward statistics computed by the Pallas kernel."""
  return _stats(h_s, w_s, h_t, w_t, y.astype(jnp.int32), block, chunk, interpret)
