"""A Flax NNX causal decoder for the Qwen2 and Llama families, and its value-head variant.

Layer params are stacked along a leading `layers` axis and the blocks run under
`jax.lax.scan`: compile time stays flat in depth (30-layer SmolLM2, 36-layer Qwen 3B) and
the stacked arrays shard cleanly. Every param carries logical axis names in its `axes`
metadata; `dgpo_jax.parallel.sharding` maps them to mesh axes.

One forward serves training and sampling. Without a cache, keys are the input chunk
itself. With a cache, the chunk's keys/values are written at cache slots
`positions_bt` (per row, so rows of different lengths share one batch) and queries attend
to every slot at or before their own position, which lets the sampler prefill, decode one
token, or append a whole observation to a live cache with the same code.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgpo_jax.models.config import ModelConfig

Cache = dict  # {"k": [L, B, S, KV, hd], "v": [L, B, S, KV, hd]}

_NEG_INF = -1e30


def _param(rngs: nnx.Rngs, cfg: ModelConfig, shape, axes, init="normal"):
  if init == "normal":
    value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  return nnx.Param(value.astype(cfg.jnp_param_dtype), axes=axes)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """RoPE inverse frequencies [head_dim/2], with Llama-3 scaling when configured."""
  hd = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
  sc = cfg.rope_scaling_dict
  if sc:
    factor, low, high = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old_ctx = sc["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def apply_rope(x_bthd, positions_bt, inv_freq):
  """Rotates x with HF's half-split layout (rotate_half), in float32."""
  angles = positions_bt[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x = x_bthd.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_bthd.dtype)


def rms_norm(x, w, eps):
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return (xf * w.astype(jnp.float32)).astype(x.dtype)


class Blocks(nnx.Module):
  """The n_layers decoder blocks, params stacked on a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    L, D, H, KV, hd, F = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                          cfg.d_ff)
    p = lambda shape, axes, init="normal": _param(rngs, cfg, shape, axes, init)
    self.attn_norm = p((L, D), ("layers", None), "ones")
    self.wq = p((L, D, H, hd), ("layers", "embed", "heads", "head_dim"))
    self.wk = p((L, D, KV, hd), ("layers", "embed", "kv_heads", "head_dim"))
    self.wv = p((L, D, KV, hd), ("layers", "embed", "kv_heads", "head_dim"))
    if cfg.qkv_bias:
      self.bq = p((L, H, hd), ("layers", "heads", "head_dim"), "zeros")
      self.bk = p((L, KV, hd), ("layers", "kv_heads", "head_dim"), "zeros")
      self.bv = p((L, KV, hd), ("layers", "kv_heads", "head_dim"), "zeros")
    self.wo = p((L, H, hd, D), ("layers", "heads", "head_dim", "embed"))
    self.mlp_norm = p((L, D), ("layers", None), "ones")
    self.w_gate = p((L, D, F), ("layers", "embed", "mlp"))
    self.w_up = p((L, D, F), ("layers", "embed", "mlp"))
    self.w_down = p((L, F, D), ("layers", "mlp", "embed"))

  def stacked(self) -> dict:
    return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


def _block(cfg: ModelConfig, inv_freq, p, x, positions_bt, kv_fn):
  """One decoder block; returns (x, kv_state).

  `kv_fn(k, v) -> (keys, values, key_positions, key_valid, kv_state)` decides where the
  chunk's keys/values go (nowhere, or into the cache) and what the queries attend to.
  """
  dt = cfg.jnp_dtype
  B, T, _ = x.shape
  h = rms_norm(x, p["attn_norm"], cfg.rms_eps)
  q = jnp.einsum("btd,dhk->bthk", h, p["wq"].astype(dt))
  k = jnp.einsum("btd,dhk->bthk", h, p["wk"].astype(dt))
  v = jnp.einsum("btd,dhk->bthk", h, p["wv"].astype(dt))
  if cfg.qkv_bias:
    q, k, v = q + p["bq"].astype(dt), k + p["bk"].astype(dt), v + p["bv"].astype(dt)
  q = apply_rope(q, positions_bt, inv_freq)
  k = apply_rope(k, positions_bt, inv_freq)
  keys, values, kpos_bs, kvalid_bs, kv_state = kv_fn(k, v)
  G = cfg.n_heads // cfg.n_kv_heads
  qg = q.reshape(B, T, cfg.n_kv_heads, G, cfg.head_dim)
  scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys).astype(jnp.float32)
  scores = scores / math.sqrt(cfg.head_dim)
  mask = (kpos_bs[:, None, :] <= positions_bt[:, :, None]) & kvalid_bs[:, None, :]
  scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dt)
  attn = jnp.einsum("bkgts,bskd->btkgd", probs, values).reshape(B, T, cfg.n_heads, cfg.head_dim)
  x = x + jnp.einsum("bthk,hkd->btd", attn, p["wo"].astype(dt))
  h = rms_norm(x, p["mlp_norm"], cfg.rms_eps)
  gate = jnp.einsum("btd,df->btf", h, p["w_gate"].astype(dt))
  up = jnp.einsum("btd,df->btf", h, p["w_up"].astype(dt))
  x = x + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, p["w_down"].astype(dt))
  return x, kv_state


class Decoder(nnx.Module):
  """Causal LM: embedding → stacked blocks → final RMSNorm → LM head."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False):
    self.cfg = cfg
    self.remat = remat
    self.embed = _param(rngs, cfg, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"))
    self.blocks = Blocks(cfg, rngs)
    self.final_norm = _param(rngs, cfg, (cfg.d_model,), (None,), "ones")
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, cfg, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))

  def head_weight(self):
    """The LM head as [D, V] (the embedding transposed when tied)."""
    return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

  def hidden(self, tokens_bt, positions_bt=None, *, valid_bt=None,
             cache: Optional[Cache] = None):
    """Final hidden states [B, T, D] (after the final norm) and the updated cache.

    Args:
      tokens_bt: int token ids [B, T].
      positions_bt: absolute positions [B, T]; default 0..T-1. With a cache these are also
        the cache slots the chunk's keys/values are written to.
      valid_bt: which input tokens are real (keys of padding are masked out); only used
        without a cache (with a cache, slots past a query's position are never attended).
      cache: None for a plain forward, else {"k", "v"} of shape [L, B, S, KV, hd].
    """
    cfg = self.cfg
    B, T = tokens_bt.shape
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    positions_bt = positions_bt.astype(jnp.int32)
    inv_freq = jnp.asarray(rope_inv_freq(cfg))
    x = jnp.take(self.embed[...], tokens_bt, axis=0).astype(cfg.jnp_dtype)
    stacked = self.blocks.stacked()
    layer_ids = jnp.arange(cfg.n_layers)

    if cache is None:
      kvalid = jnp.ones((B, T), bool) if valid_bt is None else valid_bt.astype(bool)

      def layer(x, xs):
        p, _ = xs
        kv_fn = lambda k, v: (k, v, positions_bt, kvalid, None)
        return _block(cfg, inv_freq, p, x, positions_bt, kv_fn)[0], None

      if self.remat:
        layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)
      x, _ = jax.lax.scan(layer, x, (stacked, layer_ids))
      new_cache = None
    else:
      S = cache["k"].shape[2]
      bidx = jnp.arange(B)[:, None]
      kpos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
      kvalid = jnp.ones((B, S), bool)

      def layer(carry, xs):
        x, ck, cv = carry
        p, l = xs

        def kv_fn(k, v):
          nk = ck.at[l, bidx, positions_bt].set(k.astype(ck.dtype), mode="drop")
          nv = cv.at[l, bidx, positions_bt].set(v.astype(cv.dtype), mode="drop")
          return nk[l], nv[l], kpos, kvalid, (nk, nv)

        x, (ck, cv) = _block(cfg, inv_freq, p, x, positions_bt, kv_fn)
        return (x, ck, cv), None

      (x, ck, cv), _ = jax.lax.scan(layer, (x, cache["k"], cache["v"]), (stacked, layer_ids))
      new_cache = {"k": ck, "v": cv}
    return rms_norm(x, self.final_norm[...], cfg.rms_eps), new_cache

  def logits(self, hidden_btd):
    """LM-head logits [B, T, V] in float32."""
    w = self.head_weight().astype(self.cfg.jnp_dtype)
    return jnp.einsum("btd,dv->btv", hidden_btd, w, preferred_element_type=jnp.float32)

  def __call__(self, tokens_bt, positions_bt=None, *, valid_bt=None, cache=None):
    """Logits [B, T, V] (float32) and the updated cache (None without one)."""
    h, cache = self.hidden(tokens_bt, positions_bt, valid_bt=valid_bt, cache=cache)
    return self.logits(h), cache


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> Cache:
  """An empty KV cache with `size` slots per row."""
  shape = (cfg.n_layers, batch, size, cfg.n_kv_heads, cfg.head_dim)
  dt = dtype or cfg.jnp_dtype
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


class ValueModel(nnx.Module):
  """PPO critic: a decoder trunk with a scalar value head on the final hidden states."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False):
    self.trunk = Decoder(cfg, rngs=rngs, remat=remat)
    self.value_w = nnx.Param(jnp.zeros((cfg.d_model,), cfg.jnp_param_dtype), axes=("embed",))
    self.value_b = nnx.Param(jnp.zeros((), jnp.float32), axes=())

  def __call__(self, tokens_bt, positions_bt=None, *, valid_bt=None):
    """Values [B, T] in float32: V(prefix up to and including token t)."""
    h, _ = self.trunk.hidden(tokens_bt, positions_bt, valid_bt=valid_bt)
    return (jnp.einsum("btd,d->bt", h.astype(jnp.float32), self.value_w[...].astype(jnp.float32))
            + self.value_b[...])
