"""Training-step speed of the synthetic world's teacher: what each decoder choice buys.

    python -m benchmarks.train_step [--widths=256,512,704] [--out=FILE.json]

The synthetic teacher (d=128, 4 layers, 2,048 vocabulary) trains on 16 rows per step:
256-token LM rows in pretraining, 320-704-token demonstrations in SFT. For each width, one
full jitted update (forward, backward, AdamW) is timed in the same run with:

  default       causal query blocks of 128 (attn_chunk) and the unrolled layer stack
  rolled        the same with the layers under a rolled `lax.scan` (scan_unroll=1)
  one_block     the same with attention over all keys at once (attn_chunk=0)
  neither       attn_chunk=0 and scan_unroll=1

and, separately, the SwiGLU MLP's forward+backward written as a 3-D einsum over
[batch, time, d] against the same matmuls on flattened [batch·time, d] rows (what
`decoder._dense` does). Every figure is a median of timed repeats after a compile call.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import emit, width_args
from dgpo_jax.models import config as model_config
from dgpo_jax.models.decoder import Decoder
from dgpo_jax.parallel import sharding
from dgpo_jax.train import lm

ROWS = 16
VARIANTS = {"default": {}, "rolled": dict(scan_unroll=1), "one_block": dict(attn_chunk=0),
            "neither": dict(attn_chunk=0, scan_unroll=1)}


def _median_s(fn, repeats, after_compile=None):
  jax.block_until_ready(fn())  # compile
  if after_compile:
    after_compile()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def step_time(cfg, width, repeats, after_compile=None):
  mesh = sharding.make_mesh()
  gd, params, sh = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
  tx = lm.make_optimizer(1e-3, 100, 10)
  shape = jax.eval_shape(lambda p: lm.init_state(p, tx), params)
  state_sh = lm.state_shardings(tx, shape, sh, mesh)
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(3, cfg.vocab_size, (ROWS, width + 1)).astype(np.int32),
           "mask": np.ones((ROWS, width + 1), np.int32)}
  batch_sh = {k: sharding.batch_sharding(mesh, 2) for k in batch}
  update = lm.make_update(gd, tx, state_sh, batch_sh)
  box = [jax.jit(lambda p: lm.init_state(p, tx), out_shardings=state_sh)(params)]

  def one():
    box[0], m = update(box[0], batch, None)
    return m["loss"]

  return _median_s(one, repeats, after_compile)


def mlp_times(width, repeats, d=128, f=384):
  r = np.random.default_rng(0)
  x = jnp.asarray(r.standard_normal((ROWS, width, d), np.float32))
  a, b, c = (jnp.asarray(r.standard_normal(s, np.float32) * 0.05) for s in ((d, f), (d, f),
                                                                             (f, d)))

  def einsum3d(x, a, b, c):
    h = jax.nn.silu(jnp.einsum("btd,df->btf", x, a)) * jnp.einsum("btd,df->btf", x, b)
    return (jnp.einsum("btf,fd->btd", h, c) ** 2).sum()

  def flat2d(x, a, b, c):
    x2 = x.reshape(-1, d)
    return (((jax.nn.silu(x2 @ a) * (x2 @ b)) @ c) ** 2).sum()

  out = {}
  for name, fn in (("einsum_3d", einsum3d), ("flat_2d", flat2d)):
    g = jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3)))
    out[name] = _median_s(lambda: g(x, a, b, c), repeats)
  return out


def main():
  args = width_args(__doc__, "256,512,704")
  base = model_config.preset("tiny-llama", d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                             d_ff=384, vocab_size=2048, max_seq_len=4096, scan_unroll=4)
  rows = []
  for w in (int(x) for x in args.widths.split(",")):
    row = {"width": w, "tokens_per_step": ROWS * w}
    for name, kw in VARIANTS.items():
      row[f"{name}_step_s"] = step_time(base.replace(**kw), w, args.repeats)
    for name in VARIANTS:
      if name != "default":
        row[f"{name}_over_default"] = row[f"{name}_step_s"] / row["default_step_s"]
    mlp = mlp_times(w, args.repeats)
    row.update(mlp_fwd_bwd_einsum_3d_s=mlp["einsum_3d"], mlp_fwd_bwd_flat_2d_s=mlp["flat_2d"],
               mlp_einsum_3d_over_flat_2d=mlp["einsum_3d"] / mlp["flat_2d"])
    rows.append(row)
    print(f"width {w}: default {row['default_step_s'] * 1e3:.0f} ms, neither "
          f"{row['neither_step_s'] * 1e3:.0f} ms", flush=True)
  emit({"benchmark": "train_step", "backend": jax.default_backend(),
        "model": {"d_model": 128, "n_layers": 4, "d_ff": 384, "vocab": 2048,
                  "params": base.num_params()}, "rows": ROWS, "results": rows}, args.out)


if __name__ == "__main__":
  main()
