"""The fused CPU causal attention (`models/cpu_attention.py`) against XLA's, side by side.

    python -m benchmarks.attention [--widths=256,512,704] [--repeats=5] [--out=FILE.json]

For the synthetic world's teacher (128x4x384) and student (48x2x144), both with 4 heads of
16 dims and 2 KV heads (the `tiny-llama` preset's head_dim, which `pipeline.prepare.model_cfg`
keeps), 16 rows per step as in their SFT and KD, one XLA:CPU thread (as `configs/synthetic.py`
runs): at each width, (1) one layer's attention forward and forward+backward alone, XLA's
causal query blocks of 128 (`attn_chunk`) against the kernel, and (2) a whole jitted update
(forward, backward, AdamW; `benchmarks.train_step.step_time`) with `attn_impl="xla"` against
`"cpu_kernel"`. Medians after a compile call, every pair timed in the same run. (3) The
kernel's forward+backward again with right padding as in a KD batch (row b keeps its first
width·(1 − b/(2·16)) tokens, 77% real; no loss on padding queries): whole blocks of padding
queries are skipped, so it is compared with the same call on all-real rows.
Without the kernels (no C++ compiler) it exits with the reason.
"""

import os
import sys

# Before jax: one XLA:CPU thread, as the synthetic configs run (their `xla_flags`).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import emit, width_args  # noqa: E402
from benchmarks.train_step import ROWS, _median_s, step_time  # noqa: E402
from dgpo_jax.models import config as model_config  # noqa: E402
from dgpo_jax.models import cpu_attention, decoder  # noqa: E402

MODELS = {"teacher_128x4x384": (128, 4, 384), "student_48x2x144": (48, 2, 144)}
VOCAB = 1550  # seed 0's world


def attention_times(cfg, width, repeats):
  """(forward, forward+backward) seconds of one layer's attention, XLA's and the kernel's."""
  r = np.random.default_rng(0)
  B, H, KV, hd = ROWS, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  q = jnp.asarray(r.standard_normal((B, width, H, hd)), jnp.float32)
  k, v = (jnp.asarray(r.standard_normal((B, width, KV, hd)), jnp.float32) for _ in range(2))
  valid = jnp.ones((B, width), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (B, width))
  segs = lambda kk, vv: [(kk, vv, pos, valid > 0)]
  scale = 1.0 / np.sqrt(hd)
  impls = {"xla": lambda q, k, v: decoder._xla_attention(cfg, q, k, v, pos, segs, True, scale),
           "kernel": lambda q, k, v: cpu_attention.causal_attention(q, k, v, valid, scale)}
  out = {}
  for name, fn in impls.items():
    fwd = jax.jit(fn)
    both = jax.jit(jax.grad(lambda q, k, v: (fn(q, k, v) ** 2).sum(), argnums=(0, 1, 2)))
    out[name] = (_median_s(lambda: fwd(q, k, v), repeats),
                 _median_s(lambda: both(q, k, v), repeats))
  lengths = width - np.arange(B) * width // (2 * B)
  padded = jnp.asarray(np.arange(width)[None] < lengths[:, None], jnp.int32)
  real = padded[..., None, None].astype(jnp.float32)
  both = jax.jit(jax.grad(lambda q, k, v: (cpu_attention.causal_attention(
      q, k, v, padded, scale) ** 2 * real).sum(), argnums=(0, 1, 2)))
  out["kernel_right_padded"] = (None, _median_s(lambda: both(q, k, v), repeats),
                                float(padded.mean()))
  return out


def main():
  args = width_args(__doc__, "256,512,704")
  if jax.device_count() != 1 or not cpu_attention.usable():
    sys.exit("error: the CPU attention kernels cannot run here (see the warning above)")
  results = []
  for name, (d, n_layers, ff) in MODELS.items():
    cfg = model_config.preset("tiny-llama", d_model=d, n_layers=n_layers, n_heads=4,
                              n_kv_heads=2, d_ff=ff, vocab_size=VOCAB, max_seq_len=4096,
                              scan_unroll=n_layers, attn_chunk=128)
    for w in (int(x) for x in args.widths.split(",")):
      att = attention_times(cfg, w, args.repeats)
      step = {i: step_time(cfg.replace(attn_impl=i), w, args.repeats)
              for i in ("xla", "cpu_kernel")}
      row = {"model": name, "head_dim": cfg.head_dim, "params": cfg.num_params(), "width": w,
             "attention_fwd_s": {"xla": att["xla"][0], "kernel": att["kernel"][0]},
             "attention_fwd_bwd_s": {"xla": att["xla"][1], "kernel": att["kernel"][1]},
             "attention_fwd_bwd_kernel_over_xla": att["kernel"][1] / att["xla"][1],
             "kernel_fwd_bwd_right_padded_s": att["kernel_right_padded"][1],
             "right_padded_real_share": att["kernel_right_padded"][2],
             "kernel_right_padded_over_all_real": att["kernel_right_padded"][1]
                                                  / att["kernel"][1],
             "update_step_s": step,
             "update_step_kernel_over_xla": step["cpu_kernel"] / step["xla"]}
      results.append(row)
      print(f"{name} width {w}: attention fwd+bwd {att['xla'][1] * 1e3:.1f} → "
            f"{att['kernel'][1] * 1e3:.1f} ms ({att['kernel_right_padded'][1] * 1e3:.1f} "
            f"right-padded), update {step['xla'] * 1e3:.0f} → "
            f"{step['cpu_kernel'] * 1e3:.0f} ms", flush=True)
  emit({"benchmark": "attention", "backend": jax.default_backend(), "rows": ROWS,
        "xla_flags": os.environ["XLA_FLAGS"], "results": results}, args.out)


if __name__ == "__main__":
  main()
