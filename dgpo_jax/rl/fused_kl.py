"""Per-token statistics of a student and a teacher LM head, without [N, V] float32 log-probs.

Both models' logits are recomputed chunk by chunk over the vocabulary from the final hidden
states and the LM-head weights (as fused linear cross-entropy does), with an online
log-sum-exp. What stays in memory is O(block × chunk) per step plus O(N) running statistics.

`token_stats` returns, per token n with target y_n:
  logp_s, logp_t   log π_s(y_n), log π_t(y_n)
  kl_ts            KL(π_t ‖ π_s) over the full vocabulary (forward KL: the KD loss)
  kl_st            KL(π_s ‖ π_t) (the exact "full" reward estimator)
  ent_s            entropy of π_s
It has a custom VJP: gradients flow to the student's hidden states and head only (the teacher
is frozen), and the backward pass recomputes the logits chunk by chunk too.

`chunked_divergence` covers the distillation losses that mix the two distributions (skew KL,
JSD, TAID's interpolated teacher) with a two-pass chunked scan under `jax.checkpoint`.

The Pallas kernel for accelerators lives in `fused_kl_pallas.py`; `naive_stats` is the
reference that materializes everything (tests and benchmarks compare against it).
"""

import functools

import jax
import jax.numpy as jnp

NEG = -1e30  # padded vocabulary columns: finite, so 0 * NEG stays 0 (no NaN)
STATS = ("logp_s", "logp_t", "kl_ts", "kl_st", "ent_s")


def _pad_to(x, n, axis):
  pad = n - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def _layout(h_s, w_s, h_t, w_t, y, block, chunk):
  """Pads tokens to whole blocks (the head weights are sliced in place, never copied)."""
  n, v = h_s.shape[0], w_s.shape[1]
  if w_t is not None and w_t.shape[1] != v:
    raise ValueError(f"student vocabulary {v} != teacher vocabulary {w_t.shape[1]}")
  block, chunk = min(block, n), min(chunk, v)
  nb, nc = -(-n // block), -(-v // chunk)
  hs = _pad_to(h_s, nb * block, 0).reshape(nb, block, -1)
  ht = None if h_t is None else _pad_to(h_t, nb * block, 0).reshape(nb, block, -1)
  yb = _pad_to(y, nb * block, 0).reshape(nb, block)
  return hs, ht, yb, (n, v, block, chunk, nb, nc)


def _chunk_start(c, chunk, v):
  # The last chunk is shifted left to end at v (no padded copy of the weights); its columns
  # that the previous chunk already covered are masked out.
  return jnp.minimum(c * chunk, v - chunk)


def _chunk_logits(h, w, c, chunk, v):
  """Logits of vocabulary chunk c ([n, chunk], masked columns = NEG) and their column ids."""
  start = _chunk_start(c, chunk, v)
  wc = jax.lax.dynamic_slice_in_dim(w, start, chunk, axis=1)
  z = jnp.einsum("nd,dc->nc", h, wc, preferred_element_type=jnp.float32)
  col = start + jnp.arange(chunk)
  return jnp.where(col[None] >= c * chunk, z, NEG), col


def _block_forward(hs, w_s, ht, w_t, y, chunk, v, nc):
  """Online statistics for one token block: scan over vocabulary chunks. ht None: the
  student's own statistics only (logp_s, ent_s)."""
  b = hs.shape[0]
  pair = ht is not None
  sides = (("ms", "ls", "as_", "bs"),) + ((("mt", "lt", "at", "bt"),) if pair else ())
  # alone, the student carries no cross term (bs) and no teacher accumulators
  keys = sum(sides, ("ys", "yt")) if pair else ("ms", "ls", "as_", "ys")
  init = {k: jnp.full((b,), NEG) if k[0] == "m" else jnp.zeros(b) for k in keys}

  def body(acc, c):
    zs, col = _chunk_logits(hs, w_s, c, chunk, v)
    zt = _chunk_logits(ht, w_t, c, chunk, v)[0] if pair else zs
    out = dict(acc)
    for (m, l, a, bb), z, other in zip(sides, (zs, zt), (zt, zs)):
      m_new = jnp.maximum(acc[m], z.max(-1))
      scale = jnp.exp(acc[m] - m_new)
      e = jnp.exp(z - m_new[:, None])
      out[m] = m_new
      out[l] = acc[l] * scale + e.sum(-1)
      out[a] = acc[a] * scale + (e * z).sum(-1)
      if pair:
        out[bb] = acc[bb] * scale + (e * other).sum(-1)
    hit = (col[None] == y[:, None]) & (zs > NEG)
    out["ys"] = acc["ys"] + jnp.where(hit, zs, 0.0).sum(-1)
    if pair:
      out["yt"] = acc["yt"] + jnp.where(hit, zt, 0.0).sum(-1)
    return out, None

  acc, _ = jax.lax.scan(body, init, jnp.arange(nc))
  lse_s = acc["ms"] + jnp.log(acc["ls"])
  es_zs = acc["as_"] / acc["ls"]
  if not pair:
    return dict(logp_s=acc["ys"] - lse_s, ent_s=lse_s - es_zs), (lse_s, es_zs)
  lse_t = acc["mt"] + jnp.log(acc["lt"])
  es_zt = acc["bs"] / acc["ls"]
  et_zt, et_zs = acc["at"] / acc["lt"], acc["bt"] / acc["lt"]
  stats = dict(logp_s=acc["ys"] - lse_s, logp_t=acc["yt"] - lse_t,
               kl_ts=(et_zt - lse_t) - (et_zs - lse_s), kl_st=(es_zs - lse_s) - (es_zt - lse_t),
               ent_s=lse_s - es_zs)
  return stats, (lse_s, lse_t, es_zs, es_zt)


def _forward(h_s, w_s, h_t, w_t, y, block, chunk):
  hs, ht, yb, (n, v, block, chunk, nb, nc) = _layout(h_s, w_s, h_t, w_t, y, block, chunk)
  stats, res = jax.lax.map(
      lambda a: _block_forward(a[0], w_s, a[1], w_t, a[2], chunk, v, nc), (hs, ht, yb))
  flat = lambda x: x.reshape(-1)[:n]
  return {k: flat(s) for k, s in stats.items()}, tuple(flat(r) for r in res)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _token_stats(h_s, w_s, h_t, w_t, y, block, chunk):
  return _forward(h_s, w_s, h_t, w_t, y, block, chunk)[0]


def _fwd(h_s, w_s, h_t, w_t, y, block, chunk):
  stats, res = _forward(h_s, w_s, h_t, w_t, y, block, chunk)
  return stats, (h_s, w_s, h_t, w_t, y, res)


def _bwd(block, chunk, saved, g):
  h_s, w_s, h_t, w_t, y, res = saved
  pair = h_t is not None
  n, d = h_s.shape
  hs, ht, yb, (n, v, block, chunk, nb, nc) = _layout(h_s, w_s, h_t, w_t, y, block, chunk)
  blk = lambda x: _pad_to(x.astype(jnp.float32), nb * block, 0).reshape(nb, block)
  zero = jnp.zeros((nb, block), jnp.float32)
  lse_s, lse_t, es_zs, es_zt = (blk(r) for r in res) if pair else (blk(res[0]), zero,
                                                                   blk(res[1]), zero)
  g_lp, g_kts, g_kst, g_ent = (blk(g[k]) if k in g else zero
                               for k in ("logp_s", "kl_ts", "kl_st", "ent_s"))

  def block_body(dw, xs):
    h, ht_, yy, ls, lt, ezs, ezt, a, b_, c_, e_ = xs

    def chunk_body(carry, c):
      dh, dw = carry
      zs, col = _chunk_logits(h, w_s, c, chunk, v)
      ps = jnp.exp(zs - ls[:, None])
      onehot = (col[None] == yy[:, None]).astype(jnp.float32)
      cs_ = zs - ezs[:, None]
      dz = a[:, None] * (onehot - ps) - e_[:, None] * ps * cs_
      if pair:  # the KL terms' gradients (the teacher side is frozen)
        zt, _ = _chunk_logits(ht_, w_t, c, chunk, v)
        pt = jnp.exp(zt - lt[:, None])
        dz = dz + b_[:, None] * (ps - pt) + c_[:, None] * ps * (cs_ - (zt - ezt[:, None]))
      dz = jnp.where(zs > NEG, dz, 0.0)  # columns of the previous chunk (overlap) or padding
      start = _chunk_start(c, chunk, v)
      wc = jax.lax.dynamic_slice_in_dim(w_s, start, chunk, axis=1).astype(jnp.float32)
      dh = dh + jnp.einsum("nc,dc->nd", dz, wc)
      upd = jax.lax.dynamic_slice_in_dim(dw, start, chunk, axis=1) + jnp.einsum(
          "nd,nc->dc", h.astype(jnp.float32), dz)
      return (dh, jax.lax.dynamic_update_slice_in_dim(dw, upd, start, axis=1)), None

    (dh, dw), _ = jax.lax.scan(chunk_body, (jnp.zeros(h.shape, jnp.float32), dw),
                               jnp.arange(nc))
    return dw, dh

  dw, dh = jax.lax.scan(block_body, jnp.zeros((d, v), jnp.float32),
                        (hs, ht, yb, lse_s, lse_t, es_zs, es_zt, g_lp, g_kts, g_kst, g_ent))
  dh = dh.reshape(nb * block, d)[:n].astype(h_s.dtype)
  frozen = lambda x: None if x is None else jnp.zeros_like(x)
  return dh, dw.astype(w_s.dtype), frozen(h_t), frozen(w_t), None


_token_stats.defvjp(_fwd, _bwd)


def token_stats(h_s, w_s, h_t, w_t, y, *, block: int = 1024, chunk: int = 8192,
                impl: str = "jnp"):
  """Per-token statistics (see the module docstring) for flattened tokens.

  Args:
    h_s: student final hidden states [N, Ds]; w_s: student head [Ds, V].
    h_t: teacher final hidden states [N, Dt]; w_t: teacher head [Dt, V] (frozen). Both None:
      the student's own logp_s and ent_s only, at half the head matmuls of a detached copy
      as the teacher (what the PPO update needs).
    y: target token ids int [N].
    block, chunk: tokens and vocabulary columns per step (memory ∝ block × chunk).
    impl: "jnp" (chunked scan, any backend), "pallas" (the accelerator kernel for the
      forward statistics; backward as jnp), "pallas_interpret" (same, interpreted on CPU),
      "naive" (materializes [N, V]; reference only).

  Returns:
    dict of float32 [N] arrays: logp_s, logp_t, kl_ts, kl_st, ent_s (logp_s, ent_s when h_t
    is None).
  """
  if impl not in ("jnp", "pallas", "pallas_interpret", "naive"):
    raise ValueError(f"token_stats: impl={impl!r} (expected jnp, pallas, pallas_interpret, naive)")
  sg = jax.lax.stop_gradient
  if h_t is None and impl == "naive":  # the reference: the policy against its detached copy
    st = naive_stats(h_s, w_s, sg(h_s), sg(w_s), y)
    return {k: st[k] for k in ("logp_s", "ent_s")}
  if h_t is None:  # the Pallas kernel computes pairs; one model's statistics take the jnp scan
    return _token_stats(h_s, w_s, None, None, y.astype(jnp.int32), block, chunk)
  w_t = match_vocab(w_s, w_t)
  if impl == "naive":
    return naive_stats(h_s, w_s, sg(h_t), sg(w_t), y)
  if impl in ("pallas", "pallas_interpret"):
    from dgpo_jax.rl import fused_kl_pallas
    return fused_kl_pallas.token_stats(h_s, w_s, h_t, w_t, y, block=block, chunk=chunk,
                                       interpret=impl == "pallas_interpret")
  return _token_stats(h_s, w_s, h_t, w_t, y.astype(jnp.int32), block, chunk)


def match_vocab(w_s, w_t):
  """The teacher head cut to the student's vocabulary when the teacher's is only padded
  larger (Qwen2.5-7B: 152,064 rows for the same 151,665-token tokenizer as 0.5B's 151,936);
  the padding rows are not tokens, so they are left out of both distributions."""
  if w_t.shape[1] > w_s.shape[1]:
    return w_t[:, :w_s.shape[1]]
  if w_t.shape[1] < w_s.shape[1]:
    raise ValueError(f"teacher vocabulary {w_t.shape[1]} < student vocabulary {w_s.shape[1]}")
  return w_t


def naive_stats(h_s, w_s, h_t, w_t, y):
  """The same statistics from full [N, V] float32 logits (reference; memory-hungry)."""
  zs = jnp.einsum("nd,dv->nv", h_s, w_s, preferred_element_type=jnp.float32)
  zt = jnp.einsum("nd,dv->nv", h_t, w_t, preferred_element_type=jnp.float32)
  ls, lt = jax.nn.log_softmax(zs, -1), jax.nn.log_softmax(zt, -1)
  ps, pt = jnp.exp(ls), jnp.exp(lt)
  take = lambda l: jnp.take_along_axis(l, y[:, None].astype(jnp.int32), -1)[:, 0]
  return dict(logp_s=take(ls), logp_t=take(lt), kl_ts=(pt * (lt - ls)).sum(-1),
              kl_st=(ps * (ls - lt)).sum(-1), ent_s=-(ps * ls).sum(-1))


# ----------------------------------------------------------------------------------------
# Mixture divergences (DistiLLM skew KL, GKD's JSD, TAID): two chunked passes, autodiff.

DIVERGENCES = ("fkl", "rkl", "skew_fkl", "skew_rkl", "jsd", "taid")


def divergence_terms(kind, lp_s, lp_t, lmix, alpha):
  """Per-column divergence terms from log-probs (summed over the vocabulary by the caller)."""
  p_s, p_t = jnp.exp(lp_s), jnp.exp(lp_t)
  if kind == "fkl":
    return p_t * (lp_t - lp_s)
  if kind == "rkl":
    return p_s * (lp_s - lp_t)
  if kind == "skew_fkl":  # KL(p_t ‖ α p_t + (1-α) p_s)
    return p_t * (lp_t - jnp.logaddexp(jnp.log(alpha) + lp_t, jnp.log1p(-alpha) + lp_s))
  if kind == "skew_rkl":  # KL(p_s ‖ α p_s + (1-α) p_t)
    return p_s * (lp_s - jnp.logaddexp(jnp.log(alpha) + lp_s, jnp.log1p(-alpha) + lp_t))
  if kind == "jsd":  # β KL(p_t‖m) + (1-β) KL(p_s‖m), m = β p_t + (1-β) p_s
    lm = jnp.logaddexp(jnp.log(alpha) + lp_t, jnp.log1p(-alpha) + lp_s)
    return alpha * p_t * (lp_t - lm) + (1 - alpha) * p_s * (lp_s - lm)
  if kind == "taid":  # KL(p_mix ‖ p_s), p_mix ∝ exp((1-α) sg(log p_s) + α log p_t)
    return jnp.exp(lmix) * (lmix - lp_s)
  raise ValueError(f"divergence {kind!r}: expected one of {DIVERGENCES}")


def chunked_divergence(h_s, w_s, h_t, w_t, kind: str, alpha: float = 0.5, *,
                       chunk: int = 8192):
  """Per-token divergence [N] between student and (frozen) teacher, chunked over V.

  kind: fkl | rkl | skew_fkl | skew_rkl (DistiLLM, alpha = skew) | jsd (GKD, alpha = β) |
  taid (alpha = interpolation t; the student side of the mixture is detached).
  Differentiable w.r.t. the student; each chunk is rematerialized in the backward pass.
  """
  if kind not in DIVERGENCES:
    raise ValueError(f"divergence {kind!r}: expected one of {DIVERGENCES}")
  h_t, w_t = jax.lax.stop_gradient(h_t), jax.lax.stop_gradient(match_vocab(w_s, w_t))
  n, v = h_s.shape[0], w_s.shape[1]
  chunk = min(chunk, v)
  nc = -(-v // chunk)
  cs = jnp.arange(nc)

  def logits(c):
    zs, _ = _chunk_logits(h_s, w_s, c, chunk, v)
    zt, _ = _chunk_logits(h_t, w_t, c, chunk, v)
    zm = (1 - alpha) * jax.lax.stop_gradient(zs) + alpha * zt
    return zs, zt, zm

  @jax.checkpoint
  def lse_body(carry, c):
    zs3 = logits(c)
    return tuple(jnp.logaddexp(a, jax.nn.logsumexp(z, -1)) for a, z in zip(carry, zs3)), None

  init = tuple(jnp.full((n,), NEG) for _ in range(3))
  (lse_s, lse_t, lse_m), _ = jax.lax.scan(lse_body, init, cs)

  @jax.checkpoint
  def div_body(total, c):
    zs, zt, zm = logits(c)
    t = divergence_terms(kind, zs - lse_s[:, None], zt - lse_t[:, None], zm - lse_m[:, None], alpha)
    return total + jnp.where(zs > NEG, t, 0.0).sum(-1), None

  total, _ = jax.lax.scan(div_body, jnp.zeros((n,)), cs)
  return total


def naive_divergence(h_s, w_s, h_t, w_t, kind: str, alpha: float = 0.5):
  """`chunked_divergence` from full logits (reference)."""
  zs = jnp.einsum("nd,dv->nv", h_s, w_s, preferred_element_type=jnp.float32)
  zt = jnp.einsum("nd,dv->nv", h_t, w_t, preferred_element_type=jnp.float32)
  zt = jax.lax.stop_gradient(zt)
  zm = (1 - alpha) * jax.lax.stop_gradient(zs) + alpha * zt
  ls, lt, lm = (jax.nn.log_softmax(z, -1) for z in (zs, zt, zm))
  return divergence_terms(kind, ls, lt, lm, alpha).sum(-1)
