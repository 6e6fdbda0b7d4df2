"""Small-batch decode kernels for the CPU backend (XLA FFI custom calls written in C++).

At batch 8, XLA:CPU's GEMM reads smollm2-135m's weights at about half of memory speed, and
under the layer scan it first copies each layer's weight and cache slice. The kernels in
`cpu_decode.cc` read stacked operands in place (the layer index is an operand): weights
packed into column panels (`pack`, a decode-only copy the sampler keeps) are streamed once
per step with up to 8 rows' outputs in registers, and attention reads only each row's
filled cache slots. `python -m benchmarks.decode` measures the effect (its `kernels` field
says whether they ran).

The library is compiled on first use with the host's C++ compiler (`$CXX`, default g++;
-O3 -march=native) into `$DGPO_JAX_CACHE/kernels/`, keyed by the sources, the compiler and
the CPU, and loaded from there afterwards (a few seconds once). It also holds the training
forwards' fused causal attention (`cpu_attention.cc`, used through `models/cpu_attention.py`). Without a compiler, or with
`DGPO_JAX_CPU_KERNELS=0`, `available()` is False and the decoder keeps its XLA path; the
reason is logged once. Only float32, single-device, non-differentiated use: the sampler
decides when (`Sampler(..., cpu_kernels=...)`).
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dgpo_jax.utils.cli import cache_dir

_DIR = os.path.dirname(__file__)
# One library from both kernel sources (cpu_attention.cc: the training forwards' fused causal
# attention, `models/cpu_attention.py`); the shared header is part of the build key.
_SRCS = [os.path.join(_DIR, f) for f in ("cpu_decode.cc", "cpu_attention.cc")]
_HEADER = os.path.join(_DIR, "cpu_kernels.h")
_TARGETS = {"dgpo_matmul_packed": "DgpoMatmulPacked",
            "dgpo_decode_attention": "DgpoDecodeAttention",
            "dgpo_causal_attention_fwd": "DgpoCausalAttentionFwd",
            "dgpo_causal_attention_bwd": "DgpoCausalAttentionBwd"}
PANEL = 48  # kP in cpu_decode.cc
_lock = threading.Lock()
_state: dict = {}  # "ok": bool, and "why": str when not ok


def _cpu_signature() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _build(cxx: str) -> str:
  src = b""
  for path in _SRCS + [_HEADER]:
    with open(path, "rb") as f:
      src += f.read() + b"\0"
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
  key = hashlib.sha256(b"\0".join([src, version.encode(), _cpu_signature().encode(),
                                   jax.ffi.include_dir().encode()])).hexdigest()[:16]
  out_dir = os.path.join(cache_dir(), "kernels")
  out = os.path.join(out_dir, f"cpu_decode-{key}.so")
  if os.path.exists(out):
    return out
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  cmd = [cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
         "-isystem", jax.ffi.include_dir(), "-I", _DIR, *_SRCS, "-o", tmp]
  r = subprocess.run(cmd, capture_output=True, text=True)
  if r.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
  os.replace(tmp, out)  # atomic: concurrent builders each install a complete file
  return out


def available() -> bool:
  """Whether the kernels are built and registered (builds them on the first call)."""
  with _lock:
    if "ok" in _state:
      return _state["ok"]
    why = None
    cxx = os.environ.get("CXX", "g++")
    if os.environ.get("DGPO_JAX_CPU_KERNELS", "1") == "0":
      why = "disabled by DGPO_JAX_CPU_KERNELS=0"
    elif shutil.which(cxx) is None:
      why = f"no C++ compiler ({cxx!r} not on PATH)"
    else:
      try:
        path = _build(cxx)
        lib = ctypes.cdll.LoadLibrary(path)
        for target, symbol in _TARGETS.items():
          jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                      platform="cpu")
      except (OSError, RuntimeError, AttributeError) as e:
        why = f"build failed: {e}"
    _state["ok"] = why is None
    if why:
      _state["why"] = why
      logging.warning("CPU decode kernels unavailable (%s); decoding uses XLA's dots", why)
    return _state["ok"]


def unavailable_reason() -> Optional[str]:
  return _state.get("why")


def _layer(layer) -> jax.Array:
  return jnp.asarray(layer, jnp.int32).reshape(())


def pack(w_kn):
  """[..., K, N] weights → column panels [..., ceil(N/PANEL), K, PANEL] (zero-padded), the
  layout `matmul_packed` streams."""
  *lead, K, N = w_kn.shape
  n_p = -(-N // PANEL)
  w = jnp.pad(w_kn.astype(jnp.float32), [(0, 0)] * len(lead) + [(0, 0), (0, n_p * PANEL - N)])
  return jnp.swapaxes(w.reshape(*lead, K, n_p, PANEL), -3, -2)


def matmul_packed(x_mk, w_packed, n: int, layer=0):
  """x [M, K] @ W[layer] for W packed by `pack` ([L, NP, K, PANEL], or [NP, K, PANEL] with
  layer 0): the first `n` columns, [M, n] float32. Rows go 8 at a time through registers."""
  out = jax.ShapeDtypeStruct((x_mk.shape[0], n), jnp.float32)
  return jax.ffi.ffi_call("dgpo_matmul_packed", out)(x_mk.astype(jnp.float32), w_packed,
                                                     _layer(layer))


def decode_attention(q_bhd, k_new_bkd, v_new_bkd, cache_k, cache_v, layer, lengths_b,
                     scale: float):
  """Softmax attention of one query per row over its cached slots [0, lengths[b]) of layer
  `layer` and its own new key/value. q [B, H, hd]; k_new, v_new [B, KV, hd]; caches
  [L, B, KV, S, hd] (read in place). Returns [B, H, hd] float32."""
  out = jax.ShapeDtypeStruct(q_bhd.shape, jnp.float32)
  return jax.ffi.ffi_call("dgpo_decode_attention", out)(
      q_bhd, k_new_bkd, v_new_bkd, cache_k, cache_v, _layer(layer),
      jnp.asarray(lengths_b, jnp.int32), scale=np.float32(scale))
