"""PPO update throughput: tokens/s and achieved FLOP/s as a share of the measured matmul peak.

    python -m benchmarks.ppo_update [--preset=smollm2-135m] [--rows=8] [--seq=512]
        [--out=benchmarks/results/ppo_update_cpu.json]

One mini-batch step of `rl.ppo.make_update` (actor + critic, clipped losses, entropy, both
optimizers) on `--rows` × `--seq` tokens with the preset's shapes (random weights: only the
shapes matter for speed). Model FLOPs per step = 6 × (actor + critic params) × tokens plus
causal attention (6 × layers × seq × d_model per token per model, fwd + bwd); the share is
model FLOP/s over the f32 matmul FLOP/s measured in the same run (4096² matmuls). Target
(issue 5): ≥ 50% on the smollm2-135m shapes.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import emit
from dgpo_jax.models import config as model_config
from dgpo_jax.models.decoder import Decoder, ValueModel
from dgpo_jax.rl import ppo
from dgpo_jax.train import lm


def matmul_peak(n=4096, repeats=3, dtype="float32"):
  """FLOP/s of an n×n matmul in `dtype`, best of `repeats`."""
  a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  t = []
  for _ in range(repeats):
    s = time.perf_counter()
    jax.block_until_ready(f(a, a))
    t.append(time.perf_counter() - s)
  return 2 * n ** 3 / min(t)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="smollm2-135m")
  ap.add_argument("--rows", type=int, default=8)
  ap.add_argument("--seq", type=int, default=512)
  ap.add_argument("--micro_batches", type=int, default=1)
  ap.add_argument("--no_remat", action="store_true", help="keep activations (more memory)")
  ap.add_argument("--chunk", type=int, default=8192)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  cfg = model_config.preset(a.preset)
  gd, p = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0), remat=not a.no_remat))
  cgd, cp = nnx.split(ValueModel(cfg, rngs=nnx.Rngs(1), remat=not a.no_remat))
  p, cp = nnx.to_pure_dict(p), nnx.to_pure_dict(cp)
  pc = ppo.PPOConfig(micro_batches=a.micro_batches, chunk=a.chunk)
  tx = lm.make_optimizer(1e-6, 100)
  state = ppo.init_state(p, cp, tx, tx)
  update = ppo.make_update(gd, cgd, tx, tx, pc)
  rng = np.random.default_rng(0)
  t = a.seq
  batch = {"tokens": jnp.asarray(rng.integers(0, cfg.vocab_size, (a.rows, t + 1)), jnp.int32),
           "mask": jnp.ones((a.rows, t + 1), jnp.int32),
           "old_logp": jnp.full((a.rows, t), -3.0), "adv": jnp.asarray(rng.normal(size=(a.rows, t)),
                                                                      jnp.float32),
           "returns": jnp.zeros((a.rows, t)), "old_values": jnp.zeros((a.rows, t)),
           "gen": jnp.ones((a.rows, t))}
  t0 = time.perf_counter()
  state, m = update(state, batch, jax.random.key(0))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(a.repeats):
    t0 = time.perf_counter()
    state, m = update(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  tokens = a.rows * t
  n_actor = cfg.num_params()
  model_flops = 6 * 2 * n_actor * tokens + 2 * 6 * cfg.n_layers * t * cfg.d_model * tokens
  peak = matmul_peak()
  result = {"benchmark": "ppo_update", "device": str(jax.devices()[0].device_kind),
            "backend": jax.default_backend(), "shape": vars(a), "params_actor": n_actor,
            "compile_s": compile_s, "step_s": step_s, "tokens_per_s": tokens / step_s,
            "model_flops_per_step": model_flops, "model_flops_per_s": model_flops / step_s,
            "matmul_peak_flops_per_s": peak, "share_of_matmul_peak": model_flops / step_s / peak,
            "target_share": 0.5}
  result["target_met"] = result["share_of_matmul_peak"] >= 0.5
  emit(result, a.out)


if __name__ == "__main__":
  main()
