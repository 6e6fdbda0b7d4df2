"""Fused causal attention for training forwards on one CPU device (C++, `cpu_attention.cc`).

`causal_attention(q, k, v, valid, scale)` is the attention of a plain causal forward (key j
at position j; query i attends keys j <= i that are valid), differentiable through a
custom VJP whose backward is the second kernel. The decoder uses it when its config asks
(`ModelConfig.attn_impl = "cpu_kernel"`) and `usable()` holds: a CPU backend with one
device (the kernels know nothing of shardings) and the kernels built (`cpu_decode.available`,
which compiles both sources into one library). Otherwise the decoder keeps its XLA path,
and says why once. `python -m benchmarks.attention` measures both paths side by side.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from dgpo_jax.models import cpu_decode

_said: set = set()


def usable() -> bool:
  """Whether `causal_attention` can run here (decided at trace time)."""
  why = None
  if jax.default_backend() != "cpu":
    why = f"backend is {jax.default_backend()}, not cpu"
  elif jax.device_count() != 1:
    why = f"{jax.device_count()} devices (the kernel is for one unsharded device)"
  elif not cpu_decode.available():
    why = cpu_decode.unavailable_reason()
  if why and why not in _said:
    _said.add(why)
    logging.warning("attn_impl=cpu_kernel falls back to XLA's attention: %s", why)
  return why is None


def _fwd_call(q, k, v, valid, scale):
  if not cpu_decode.available():  # registers the kernels on the first call
    raise RuntimeError(f"CPU attention kernels unavailable: {cpu_decode.unavailable_reason()}")
  B, T, H, _ = q.shape
  out = (jax.ShapeDtypeStruct(q.shape, jnp.float32),
         jax.ShapeDtypeStruct((B, H, T), jnp.float32))
  return jax.ffi.ffi_call("dgpo_causal_attention_fwd", out)(
      q, k, v, valid, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def causal_attention(q_bthd, k_btkd, v_btkd, valid_bt, scale: float):
  """Causal grouped-query attention. q [B, T, H, hd]; k, v [B, T, KV, hd]; valid int32
  [B, T] (0 = padding key). Float32 in and out: returns [B, T, H, hd]."""
  return _fwd_call(q_bthd, k_btkd, v_btkd, valid_bt, scale)[0]


def _fwd(q, k, v, valid, scale):
  o, lse = _fwd_call(q, k, v, valid, scale)
  return o, (q, k, v, valid, o, lse)


def _bwd(scale, res, do):
  q, k, v, valid, o, lse = res
  out = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct(k.shape, jnp.float32),
         jax.ShapeDtypeStruct(v.shape, jnp.float32))
  dq, dk, dv = jax.ffi.ffi_call("dgpo_causal_attention_bwd", out)(
      q, k, v, valid, o, lse, do.astype(jnp.float32), scale=np.float32(scale))
  return dq, dk, dv, None


causal_attention.defvjp(_fwd, _bwd)
