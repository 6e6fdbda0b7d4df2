"""Where batch-8 decode loses to the bandwidth limit: smollm2-135m's weight matmuls at batch 1
and 8 through XLA:CPU, each as effective GB/s of weight bytes read, side by side in one run.

    python -m benchmarks.decode_matmuls [--out=FILE.json]

Shapes: the tied LM head (49,152 × 576, 113 MB: streamed from memory every step) and one
layer's MLP up-projection (576 × 1,536, 3.5 MB: cache-resident when repeated, so it shows the
kernel, not memory). Each is timed as `x @ W` and in the forms a decode kernel could take
instead (weight-major, vocabulary chunks, multiply-reduce, per-row GEMVs). Copy bandwidth is
measured in the same run (as in benchmarks/decode.py).
"""

import argparse
import time

import numpy as np

from benchmarks.common import emit
from benchmarks.decode import copy_bandwidth_gbs

V, D, FF = 49152, 576, 1536


def _time(f, *args, reps):
  f(*args).block_until_ready()
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    f(*args).block_until_ready()
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  ap.add_argument("--reps", type=int, default=30)
  a = ap.parse_args()
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  emb = jnp.asarray(rng.standard_normal((V, D), np.float32))
  up = jnp.asarray(rng.standard_normal((D, FF), np.float32))
  x8 = jnp.asarray(rng.standard_normal((8, D), np.float32))

  def chunked(c):
    return lambda x, e: jax.lax.map(lambda ec: x @ ec.T, e.reshape(V // c, c, D)).transpose(
        1, 0, 2).reshape(x.shape[0], V)

  head = {
      "b1 x@E^T": (lambda x, e: x[:1] @ e.T),
      "b8 x@E^T": (lambda x, e: x @ e.T),
      "b8 (E@x^T)^T": (lambda x, e: (e @ x.T).T),
      "b8 chunks of 1024 rows": chunked(1024),
      "b8 multiply-reduce": (lambda x, e: (x[:, None, :] * e[None]).sum(-1)),
      "b8 as 8 GEMVs": (lambda x, e: jnp.stack([e @ x[i] for i in range(8)])),
  }
  mlp = {"b1 x@W": (lambda x, w: x[:1] @ w), "b8 x@W": (lambda x, w: x @ w),
         "b8 (W^T@x^T)^T": (lambda x, w: (w.T @ x.T).T)}
  out = {"device": str(jax.devices()[0]), "copy_bandwidth_gbs": copy_bandwidth_gbs(),
         "lm_head": {}, "mlp_up": {}}
  for group, fns, w, reps in (("lm_head", head, emb, a.reps), ("mlp_up", mlp, up, a.reps * 5)):
    for name, fn in fns.items():
      t = _time(jax.jit(fn), x8, w, reps=reps)
      out[group][name] = {"ms": round(t * 1e3, 4), "weight_gbs": round(w.nbytes / t / 1e9, 2)}
  out["lm_head_b8_over_b1_time"] = round(out["lm_head"]["b8 x@E^T"]["ms"]
                                         / out["lm_head"]["b1 x@E^T"]["ms"], 2)
  emit(out, a.out)


if __name__ == "__main__":
  main()
