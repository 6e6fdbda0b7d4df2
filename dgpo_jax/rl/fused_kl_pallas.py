"""Pallas kernel for the forward statistics of `fused_kl.token_stats`.

One program per block of tokens; inside it, a loop over vocabulary chunks computes both
models' logits for the block from their hidden states and head weights, and folds them into
the online log-sum-exp statistics. The [N, V] logits never exist in memory. The structure
(full-array refs, `pl.load` of `pl.ds` slices in a `fori_loop`) follows the GPU (Triton)
lowering's conventions; the backward pass is the chunked jnp one from `fused_kl` (it needs the
same per-chunk recomputation and is matmul-bound, which XLA already does well).

Tested in interpret mode on CPU (`interpret=True`), where it must equal the jnp version.
Not yet measured on a GPU or TPU in this repository: see docs/fused_kl.md.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from dgpo_jax.rl import fused_kl as F


def _kernel(hs_ref, ws_ref, ht_ref, wt_ref, y_ref, out_ref, *, chunk, nc, v):
  hs, ht, y = hs_ref[...], ht_ref[...], y_ref[...]
  b = hs.shape[0]

  def body(c, acc):
    ms, ls, as_, bs, mt, lt, at, bt, ys, yt = acc
    wsc = ws_ref[:, pl.ds(c * chunk, chunk)]
    wtc = wt_ref[:, pl.ds(c * chunk, chunk)]
    col = c * chunk + jax.lax.broadcasted_iota(jnp.int32, (b, chunk), 1)
    zs = jnp.where(col < v, jnp.dot(hs, wsc, preferred_element_type=jnp.float32), F.NEG)
    zt = jnp.where(col < v, jnp.dot(ht, wtc, preferred_element_type=jnp.float32), F.NEG)

    def fold(m, l, a, bb, z, other):
      m_new = jnp.maximum(m, z.max(-1))
      scale = jnp.exp(m - m_new)
      e = jnp.exp(z - m_new[:, None])
      return (m_new, l * scale + e.sum(-1), a * scale + (e * z).sum(-1),
              bb * scale + (e * other).sum(-1))

    ms, ls, as_, bs = fold(ms, ls, as_, bs, zs, zt)
    mt, lt, at, bt = fold(mt, lt, at, bt, zt, zs)
    hit = col == y[:, None]
    ys = ys + jnp.where(hit, zs, 0.0).sum(-1)
    yt = yt + jnp.where(hit, zt, 0.0).sum(-1)
    return ms, ls, as_, bs, mt, lt, at, bt, ys, yt

  neg, zero = jnp.full((b,), F.NEG, jnp.float32), jnp.zeros((b,), jnp.float32)
  ms, ls, as_, bs, mt, lt, at, bt, ys, yt = jax.lax.fori_loop(
      0, nc, body, (neg, zero, zero, zero, neg, zero, zero, zero, zero, zero))
  lse_s, lse_t = ms + jnp.log(ls), mt + jnp.log(lt)
  es_zs, es_zt, et_zt, et_zs = as_ / ls, bs / ls, at / lt, bt / lt
  rows = (ys - lse_s, yt - lse_t, (et_zt - lse_t) - (et_zs - lse_s),
          (es_zs - lse_s) - (es_zt - lse_t), lse_s - es_zs, lse_s, lse_t, es_zs, es_zt)
  out_ref[...] = jnp.stack(rows, 0)


def _forward(h_s, w_s, h_t, w_t, y, block, chunk, interpret):
  n, v = h_s.shape[0], w_s.shape[1]
  block, chunk = min(block, n), min(chunk, v)
  nb, nc = -(-n // block), -(-v // chunk)
  hs, ht = F._pad_to(h_s, nb * block, 0), F._pad_to(h_t, nb * block, 0)
  yb = F._pad_to(y.astype(jnp.int32), nb * block, 0)
  ws, wt = F._pad_to(w_s, nc * chunk, 1), F._pad_to(w_t, nc * chunk, 1)
  full = lambda a: pl.BlockSpec(a.shape, lambda i: (0, 0))
  out = pl.pallas_call(
      functools.partial(_kernel, chunk=chunk, nc=nc, v=v),
      grid=(nb,),
      in_specs=[pl.BlockSpec((block, hs.shape[1]), lambda i: (i, 0)), full(ws),
                pl.BlockSpec((block, ht.shape[1]), lambda i: (i, 0)), full(wt),
                pl.BlockSpec((block,), lambda i: (i,))],
      out_specs=pl.BlockSpec((9, block), lambda i: (0, i)),
      out_shape=jax.ShapeDtypeStruct((9, nb * block), jnp.float32),
      interpret=interpret,
  )(hs, ws, ht, wt, yb)[:, :n]
  stats = {k: out[i] for i, k in enumerate(F.STATS)}
  return stats, tuple(out[5:9])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _stats(h_s, w_s, h_t, w_t, y, block, chunk, interpret):
  return _forward(h_s, w_s, h_t, w_t, y, block, chunk, interpret)[0]


def _fwd(h_s, w_s, h_t, w_t, y, block, chunk, interpret):
  stats, res = _forward(h_s, w_s, h_t, w_t, y, block, chunk, interpret)
  return stats, (h_s, w_s, h_t, w_t, y, res)


def _bwd(block, chunk, interpret, saved, g):
  return F._bwd(block, chunk, saved, g)


_stats.defvjp(_fwd, _bwd)


def token_stats(h_s, w_s, h_t, w_t, y, *, block: int = 128, chunk: int = 2048,
                interpret: bool = False):
  """`fused_kl.token_stats` with the forward statistics computed by the Pallas kernel."""
  return _stats(h_s, w_s, h_t, w_t, y.astype(jnp.int32), block, chunk, interpret)
