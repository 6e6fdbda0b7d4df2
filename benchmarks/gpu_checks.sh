#!/usr/bin/env bash
# GPU-side checks (run on a CUDA machine with jax[cuda] installed; writes JSON/logs to $OUT):
#   1. tests/test_fused_kl.py on the GPU (its "pallas" cases compile the kernel for the device),
#      and the kernel against the naive computation at larger shapes;
#   2. benchmarks.fused_kl (jnp and pallas impls) on Qwen2.5-0.5B student / 3B teacher shapes;
#   3. benchmarks.ppo_update on the Qwen2.5-0.5B shapes.
# Usage: OUT=results_dir [ONLY_PALLAS=1] bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export JAX_PLATFORMS=cuda PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
# float32 references: XLA's GPU dots default to TF32, ~1e-3 off the 1e-5 the tests ask
JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -p no:cacheprovider tests/test_fused_kl.py 2>&1 | tail -15 | tee "$OUT/pytest_fused_kl.log"
JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" - <<'PYEOF' 2>&1 | tee "$OUT/pallas_check.log"
import traceback
import jax, jax.numpy as jnp, numpy as np
from dgpo_jax.rl import fused_kl as F
for (n, ds, dt, v, block, chunk) in [(45, 16, 24, 300, 16, 64), (64, 64, 128, 1000, 32, 64),
                                     (256, 128, 256, 5000, 64, 128),
                                     (256, 896, 2048, 20000, 64, 128)]:
  k = jax.random.split(jax.random.key(0), 5)
  args = (jax.random.normal(k[0], (n, ds)), jax.random.normal(k[1], (ds, v)) * 0.3,
          jax.random.normal(k[2], (n, dt)), jax.random.normal(k[3], (dt, v)) * 0.3,
          jax.random.randint(k[4], (n,), 0, v))
  try:
    got = jax.jit(lambda *a: F.token_stats(*a, block=block, chunk=chunk, impl="pallas"))(*args)
    ref = F.naive_stats(*args)
    err = max(float(jnp.abs(got[s] - ref[s]).max()) for s in F.STATS)
    print(f"pallas gpu n={n} ds={ds} dt={dt} v={v}: max abs diff {err:.2e}", "OK" if err < 1e-4 else "MISMATCH")
  except Exception as e:
    print(f"pallas gpu n={n} ds={ds} dt={dt} v={v}: FAILED {type(e).__name__}: {str(e)[:600]}")
PYEOF
# ONLY_PALLAS=1: the kernel's checks and benchmark alone
impls="jnp pallas"; [ -n "${ONLY_PALLAS:-}" ] && impls=pallas
for impl in $impls; do
  # Triton tiles live in shared memory (232 KB on an H100): small blocks for the kernel
  if [ $impl = pallas ]; then tiles="--block=64 --chunk=128"; else tiles="--block=8192 --chunk=4096"; fi
  timeout 240 "$PY" -m benchmarks.fused_kl --impl=$impl --tokens=8192 $tiles \
    --out="$OUT/fused_kl_gpu_$impl.json" > "$OUT/fused_kl_$impl.log" 2>&1 \
    || echo "fused_kl $impl failed: $(tail -c 600 "$OUT/fused_kl_$impl.log")"
done
[ -n "${ONLY_PALLAS:-}" ] || timeout 300 "$PY" -m benchmarks.ppo_update --preset=qwen2.5-0.5b --rows=8 --seq=1024 \
  --out="$OUT/ppo_update_gpu.json" > "$OUT/ppo_update.log" 2>&1 \
  || echo "ppo_update failed: $(tail -c 600 "$OUT/ppo_update.log")"
for f in "$OUT"/*.json; do echo "== $f"; head -c 1500 "$f"; echo; done
