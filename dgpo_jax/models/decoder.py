"""A Flax NNX causal decoder for the Qwen2 and Llama families, and its value-head variant.

Layer params are stacked along a leading `layers` axis and the blocks run under
`jax.lax.scan`: compile time stays flat in depth (30-layer SmolLM2, 36-layer Qwen 3B) and
the stacked arrays shard cleanly. Every param carries logical axis names in its `axes`
metadata; `dgpo_jax.parallel.sharding` maps them to mesh axes.

One forward serves training and sampling. Without a cache, keys are the input chunk
itself. With a cache, queries attend to the row's cached prefix (slots before the chunk's
first position) and to the chunk causally; the chunk's keys/values are then written at cache
slots `positions_bt` (per row, so rows of different lengths share one batch). The same code
prefills, decodes one token, or appends a whole observation to a live cache.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgpo_jax.models import cpu_attention, cpu_decode
from dgpo_jax.models.config import ModelConfig

# {"k": [L, B, KV, S, hd], "v": same}. Heads before slots: decode attention is then a batched
# matmul with (batch, kv_head) leading in both operands, faster on CPU than [.., S, KV, ..].
Cache = dict

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

def _dense(x, w, n_in: int = 1):
  """x [..., *in] @ w [*in, *out] as one 2-D matmul ([rows, in] × [in, out]).

  XLA:CPU runs the gradient dots of a 3-D einsum (contracting batch and time together)
  slower than the same dots on flattened rows (docs/benchmarks.md, "Decoder choices").
  """
  lead, ins, outs = x.shape[:x.ndim - n_in], w.shape[:n_in], w.shape[n_in:]
  y = x.reshape(-1, math.prod(ins)) @ w.reshape(math.prod(ins), -1)
  return y.reshape(*lead, *outs)


def _attend(qg, segments, positions_bt, scale, dt, kv_slice=None):
  """Softmax attention of grouped queries qg [B, KV, G, T, hd] over the segments' keys,
  scores of all segments softmaxed jointly. Returns [B, KV, G, T, hd]."""
  B, KV, G, T, hd = qg.shape
  q = qg.reshape(B, KV, G * T, hd)  # one contraction dim in every gradient dot
  scores = []
  for keys, _, kpos_bs, kvalid_bs in segments:
    if kv_slice is not None:  # later keys are masked for every query of this block
      keys = keys[:, :, :kv_slice]
      kpos_bs, kvalid_bs = kpos_bs[:, :kv_slice], kvalid_bs[:, :kv_slice]
    sc = jnp.einsum("bkqd,bksd->bkqs", q, keys).astype(jnp.float32).reshape(B, KV, G, T, -1)
    mask = (kpos_bs[:, None, :] <= positions_bt[:, :, None]) & kvalid_bs[:, None, :]
    scores.append(jnp.where(mask[:, None, None], sc * scale, _NEG_INF))
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1).astype(dt)
  probs = probs.reshape(B, KV, G * T, -1)
  out, off = 0, 0
  for (_, values, _, _), sc in zip(segments, scores):
    n = sc.shape[-1]
    vals = values if kv_slice is None else values[:, :, :kv_slice]
    out = out + jnp.einsum("bkqs,bksd->bkqd", probs[..., off:off + n], vals)
    off += n
  return out.reshape(B, KV, G, T, hd)


def _xla_attention(cfg: ModelConfig, q, k, v, positions_bt, segments_fn, causal, scale):
  """Attention through XLA's ops: q [B, T, H, hd] over `segments_fn(k, v)`, in causal query
  blocks of `cfg.attn_chunk` when `causal` (see `_block`). Returns [B, T, H, hd]."""
  B, T = q.shape[:2]
  dt = cfg.jnp_dtype
  G = cfg.n_heads // cfg.n_kv_heads
  qg = q.reshape(B, T, cfg.n_kv_heads, G, cfg.head_dim).transpose(0, 2, 3, 1, 4)  # [B,KV,G,T,hd]
  segments = segments_fn(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
  c = cfg.attn_chunk
  if causal and 0 < c < T:
    attn = jnp.concatenate(
        [_attend(qg[:, :, :, s:s + c], segments, positions_bt[:, s:s + c], scale, dt,
                 kv_slice=min(s + c, T)) for s in range(0, T, c)], axis=3)
  else:
    attn = _attend(qg, segments, positions_bt, scale, dt)
  return attn.transpose(0, 3, 1, 2, 4).reshape(B, T, cfg.n_heads, cfg.head_dim)


def _block(cfg: ModelConfig, inv_freq, p, x, positions_bt, segments_fn, causal_valid=None):
  """One decoder block; returns (x, (k, v)) with this chunk's rotated keys and values.

  `segments_fn(k, v) -> [(keys, values, key_positions, key_valid), ...]` lists what the
  queries attend to (the chunk itself, and with a cache also the cached prefix); keys and
  values are [B, KV, S, hd]. Scores of the segments are softmaxed jointly, so the cache is
  read in place, never concatenated.

  `causal_valid` [B, T] (given for a plain causal forward whose key i sits at position i,
  with which keys are real): queries are cut into blocks of `cfg.attn_chunk` and block
  [s, e) attends keys [0, e) only, so the masked upper triangle is mostly never computed
  (exact: those keys have zero weight); or, with `cfg.attn_impl = "cpu_kernel"` where it
  can run, the fused C++ kernel computes it (`cpu_attention`).
  """
  dt = cfg.jnp_dtype
  h = rms_norm(x, p["attn_norm"], cfg.rms_eps)
  q = _dense(h, p["wq"].astype(dt))
  k = _dense(h, p["wk"].astype(dt))
  v = _dense(h, p["wv"].astype(dt))
  if cfg.qkv_bias:
    q, k, v = q + p["bq"].astype(dt), k + p["bk"].astype(dt), v + p["bv"].astype(dt)
  q = apply_rope(q, positions_bt, inv_freq)
  k = apply_rope(k, positions_bt, inv_freq)
  scale = 1.0 / math.sqrt(cfg.head_dim)
  if causal_valid is not None and cfg.attn_impl == "cpu_kernel" and cpu_attention.usable():
    f32 = lambda a: a.astype(jnp.float32)
    attn = cpu_attention.causal_attention(f32(q), f32(k), f32(v), causal_valid.astype(jnp.int32),
                                          scale).astype(dt)
  else:
    attn = _xla_attention(cfg, q, k, v, positions_bt, segments_fn, causal_valid is not None,
                          scale)
  x = x + _dense(attn, p["wo"].astype(dt), n_in=2)
  h = rms_norm(x, p["mlp_norm"], cfg.rms_eps)
  gate = _dense(h, p["w_gate"].astype(dt))
  up = _dense(h, p["w_up"].astype(dt))
  x = x + _dense(jax.nn.silu(gate) * up, p["w_down"].astype(dt))
  return x, (k, v)  # [B, T, KV, hd]


def _kernel_block(cfg: ModelConfig, inv_freq, packed, i, p, x, positions_bt, cache, lengths_b):
  """`_block` for one token per row on the CPU kernels (`cpu_decode`): the weights are the
  packed stacked ones, layer `i`; attention reads the cache of layer `i` in place."""
  B = x.shape[0]
  H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  mm = lambda a, name, n: cpu_decode.matmul_packed(a, packed[name], n, i)
  h = rms_norm(x, p["attn_norm"], cfg.rms_eps)[:, 0]
  q, k, v = mm(h, "wq", H * hd), mm(h, "wk", KV * hd), mm(h, "wv", KV * hd)
  q, k, v = q.reshape(B, 1, H, hd), k.reshape(B, 1, KV, hd), v.reshape(B, 1, KV, hd)
  if cfg.qkv_bias:
    q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
  q = apply_rope(q, positions_bt, inv_freq)
  k = apply_rope(k, positions_bt, inv_freq)
  attn = cpu_decode.decode_attention(q[:, 0], k[:, 0], v[:, 0], cache["k"], cache["v"], i,
                                     lengths_b, 1.0 / math.sqrt(hd))
  x = x + mm(attn.reshape(B, H * hd), "wo", cfg.d_model)[:, None]
  h = rms_norm(x, p["mlp_norm"], cfg.rms_eps)[:, 0]
  up = jax.nn.silu(mm(h, "w_gate", cfg.d_ff)) * mm(h, "w_up", cfg.d_ff)
  return x + mm(up, "w_down", cfg.d_model)[:, None], (k, v)

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

  def packed_weights(self) -> dict:
    """The matmul weights as 2-D [in, out] per layer, packed for `cpu_decode.matmul_packed`:
    a float32 copy that one-token-per-row decoding on the CPU kernels reads (`packed=`)."""
    st, L = self.blocks.stacked(), self.cfg.n_layers
    flat_out = lambda w: w.reshape(L, w.shape[1], -1)  # [L, D, heads, hd] → [L, D, heads·hd]
    out = {k: cpu_decode.pack(flat_out(st[k])) for k in ("wq", "wk", "wv")}
    out["wo"] = cpu_decode.pack(st["wo"].reshape(L, -1, self.cfg.d_model))
    out.update({k: cpu_decode.pack(st[k]) for k in ("w_gate", "w_up", "w_down")})
    out["head"] = cpu_decode.pack(self.head_weight())
    return out

  def hidden(self, tokens_bt, positions_bt=None, *, valid_bt=None,
             cache: Optional[Cache] = None, cache_window: Optional[int] = None,
             packed: Optional[dict] = None):
    """Final hidden states [B, T, D] (after the final norm) and the updated cache.

    Args:
      tokens_bt: int token ids [B, T].
      positions_bt: absolute positions [B, T]; default 0..T-1. With a cache these are also
        the cache slots the chunk's keys/values are written to.

      valid_bt: which input tokens are real (keys of padding are masked out). With a cache,
        padding sits after the real tokens of a chunk, so causality already hides it.
      cache: None for a plain forward, else {"k", "v"} of shape [L, B, KV, S, hd].
      cache_window: static bound on the cached prefix: only slots [0, window) are attended
        (0 skips the cache, as in a prefill). Every row's chunk must start at or before it.
        Default: the whole cache.
      packed: `packed_weights()`; with a cache and one token per row, the layers run on the
        CPU kernels (`cpu_decode`; float32 on a single CPU device, not differentiable).
    """
    cfg = self.cfg
    B, T = tokens_bt.shape
    # Default positions put key i at position i: causal query blocks can skip later keys.
    causal_chunks = cache is None and positions_bt is None
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    positions_bt = positions_bt.astype(jnp.int32)
    inv_freq = jnp.asarray(rope_inv_freq(cfg))
    x = jnp.take(self.embed[...], tokens_bt, axis=0).astype(cfg.jnp_dtype)
    stacked = self.blocks.stacked()

    kvalid = jnp.ones((B, T), bool) if valid_bt is None else valid_bt.astype(bool)
    chunk_segment = lambda k, v: (k, v, positions_bt, kvalid)
    if cache is None:

      def layer(x, p):
        return _block(cfg, inv_freq, p, x, positions_bt, lambda k, v: [chunk_segment(k, v)],
                      kvalid if causal_chunks else None)[0], None

      if self.remat:
        layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)
      x, _ = jax.lax.scan(layer, x, stacked, unroll=cfg.scan_unroll)
      new_cache = None
    else:
      # The cached prefix of row b is slots [0, positions[b, 0]); the chunk's own keys are
      # attended directly and written to the cache once, after all layers.
      W = cache["k"].shape[3] if cache_window is None else min(cache_window, cache["k"].shape[3])
      start = positions_bt[:, :1]
      slots = jnp.arange(W, dtype=jnp.int32)[None]
      cache_pos = jnp.broadcast_to(slots, (B, W))
      cache_valid = slots < start

      def layer(x, xs):
        p, ck, cv = xs
        if W == 0:
          segs = lambda k, v: [chunk_segment(k, v)]
        else:
          segs = lambda k, v: [(ck[:, :, :W], cv[:, :, :W], cache_pos, cache_valid),
                               chunk_segment(k, v)]
        return _block(cfg, inv_freq, p, x, positions_bt, segs)

      if packed is not None and T == 1:
        # Big weights and the cache stay loop-invariant operands (no per-layer slice copy);
        # only the layer index and the small params (norms, biases) are scanned.
        small = {k: v for k, v in stacked.items() if k not in packed}
        lengths = jnp.minimum(start[:, 0], W)
        x, (k_new, v_new) = jax.lax.scan(
            lambda x, xs: _kernel_block(cfg, inv_freq, packed, xs[0], xs[1], x, positions_bt,
                                        cache, lengths),
            x, (jnp.arange(cfg.n_layers, dtype=jnp.int32), small))
      else:
        x, (k_new, v_new) = jax.lax.scan(layer, x, (stacked, cache["k"], cache["v"]))
      bidx = jnp.arange(B)[:, None]
      # Indexing dims 1 and 3 of [L, B, KV, S, hd] puts the [B, T] index dims first.
      write = lambda c, new: c.at[:, bidx, :, positions_bt].set(
          new.transpose(1, 2, 0, 3, 4).astype(c.dtype), mode="drop")
      new_cache = {"k": write(cache["k"], k_new), "v": write(cache["v"], v_new)}
    return rms_norm(x, self.final_norm[...], cfg.rms_eps), new_cache

  def logits(self, hidden_btd, packed: Optional[dict] = None):
    """LM-head logits [B, T, V] in float32 (through the CPU kernel when `packed` is given)."""
    B, T, D = hidden_btd.shape
    if packed is not None:
      return cpu_decode.matmul_packed(hidden_btd.reshape(B * T, D), packed["head"],
                                      self.cfg.vocab_size).reshape(B, T, -1)
    w = self.head_weight().astype(self.cfg.jnp_dtype)
    return jnp.dot(hidden_btd.reshape(B * T, D), w,
                   preferred_element_type=jnp.float32).reshape(B, T, -1)

  def __call__(self, tokens_bt, positions_bt=None, *, valid_bt=None, cache=None):
    """Logits [B, T, V] (float32) and the updated cache (None without one)."""
    h, cache = self.hidden(tokens_bt, positions_bt, valid_bt=valid_bt, cache=cache)
    return self.logits(h), cache

def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> Cache:
  """An empty KV cache with `size` slots per row."""
  shape = (cfg.n_layers, batch, cfg.n_kv_heads, size, cfg.head_dim)
  dt = dtype or cfg.jnp_dtype
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}

class ValueModel(nnx.Module):
  """PPO critic: a decoder trunk with a scalar value head on the final hidden states."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False,
               head_init: str = "zeros"):
    """head_init: "zeros" (the first values are 0), or "normal": N(0, 0.02) weights and a
    zero bias, the init of the reference's fresh token-classification head."""
    self.trunk = Decoder(cfg, rngs=rngs, remat=remat)
    if head_init == "normal":
      w = 0.02 * jax.random.normal(rngs.params(), (cfg.d_model,), jnp.float32)
    elif head_init == "zeros":
      w = jnp.zeros((cfg.d_model,), jnp.float32)
    else:
      raise ValueError(f"critic head_init {head_init!r}: expected zeros or normal")
    self.value_w = nnx.Param(w.astype(cfg.jnp_param_dtype), axes=("embed",))
    self.value_b = nnx.Param(jnp.zeros((), jnp.float32), axes=())

  def __call__(self, tokens_bt, positions_bt=None, *, valid_bt=None):
    """Values [B, T] in float32: V(prefix up to and including token t)."""
    h, _ = self.trunk.hidden(tokens_bt, positions_bt, valid_bt=valid_bt)
    return (jnp.einsum("btd,d->bt", h.astype(jnp.float32), self.value_w[...].astype(jnp.float32))
            + self.value_b[...])
