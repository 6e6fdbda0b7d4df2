"""The PPO update's LM-head statistics: the policy's own pass vs a detached copy as teacher.

    python -m benchmarks.policy_stats [--tokens=2048] [--vocab=49152] [--d_model=576]
        [--out=benchmarks/results/policy_stats_cpu.json]

The PPO update needs only the policy's log π(y) and entropy per token, with their gradients
w.r.t. the final hidden states and the head (smollm2-135m's shapes by default). "pair" is
what the update computed before: `fused_kl.token_stats` with the policy's stop-gradient copy
as the teacher, which recomputes the same logits a second time in the forward and in the
backward pass; "policy" is `token_stats` with no teacher. Both are the chunked jnp scan
with a custom VJP; time is the median of `--repeats` runs of the compiled value and
gradient after a warm-up (`benchmarks.fused_kl.measure`, which also reports the program's
peak memory), measured side by side in one run, with the matmul roofline of each (head
matmuls of 2·N·d·V FLOPs: 2 forward + 4 backward for the pair, 1 + 3 for the policy).
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import emit
from benchmarks.fused_kl import measure
from benchmarks.ppo_update import matmul_peak
from dgpo_jax.rl import fused_kl


def head_loss(pair: bool, chunk: int, block: int):
  def loss(h, w, y, g):
    sg = jax.lax.stop_gradient
    st = fused_kl.token_stats(h, w, sg(h) if pair else None, sg(w) if pair else None, y,
                              chunk=chunk, block=block)
    return (g[0] * st["logp_s"]).sum() + (g[1] * st["ent_s"]).sum()
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--tokens", type=int, default=2048)
  ap.add_argument("--vocab", type=int, default=49152)
  ap.add_argument("--d_model", type=int, default=576)
  ap.add_argument("--chunk", type=int, default=8192)
  ap.add_argument("--block", type=int, default=1024)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  k = jax.random.split(jax.random.key(0), 4)
  args = (jax.random.normal(k[0], (a.tokens, a.d_model)),
          jax.random.normal(k[1], (a.d_model, a.vocab)) * a.d_model ** -0.5,
          jax.random.randint(k[2], (a.tokens,), 0, a.vocab),
          jax.random.normal(k[3], (2, a.tokens)))
  peak = matmul_peak()
  head = 2 * a.tokens * a.d_model * a.vocab
  res = {}
  for name, pair, matmuls in (("pair", True, 6), ("policy", False, 4)):
    m, out = measure(head_loss(pair, a.chunk, a.block), args, a.repeats)
    res[name] = dict(m, head_matmuls=matmuls, roofline_s=matmuls * head / peak,
                     share_of_roofline=matmuls * head / peak / m["time_s"], out=out)
  (lp, gp), (lq, gq) = res["pair"].pop("out"), res["policy"].pop("out")
  emit({"benchmark": "policy_stats", "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(), "shape": vars(a), "matmul_peak_gflops": peak / 1e9,
        **res, "time_ratio_policy_over_pair": res["policy"]["time_s"] / res["pair"]["time_s"],
        "max_abs_diff_loss": float(abs(lp - lq)),
        "max_abs_diff_grad": float(max(jnp.abs(x - y).max() for x, y in zip(gp, gq)))}, a.out)


if __name__ == "__main__":
  main()
