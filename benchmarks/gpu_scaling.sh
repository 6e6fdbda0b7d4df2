#!/usr/bin/env bash
# `:scaling_gpu` on a CUDA machine within a wall-clock limit, grown one slice at a time.
#
# The whole grid (2 teachers × 4 students × 4 methods × 3 seeds) does not fit a short lease, so
# this runs nested slices of it in one workdir: each slice is the real `dgpo_jax.scaling`
# command on a narrowed grid, and resumes what the slice before it finished (cells, the
# prepared world, teacher and students). Every slice that completes leaves its own
# scaling.json / scaling.md; the timestamped log gives each stage's wall time on the device.
#
# Usage: OUT=dir [LIMIT_S=480] [WORKDIR=/tmp/dgpo_scg] [TEACHER=256x6x768] [METHODS="'kd','dgpo'"]
#        [SLICES="64x2x192 32x1x96,64x2x192 32x1x96,64x2x192,128x4x384"] bash benchmarks/gpu_scaling.sh
# Needs the repo's runtime packages; on a machine that has jax[cuda] but lacks ml-collections
# and bm25s, install their wheels first (docs/scaling.md says how the H200 run did).
# Writes to $OUT: gpu.txt (device, versions), scaling_gpu.log, scaling_<k>.json / .md per
# completed slice, and workdir.tar.gz (the workdir's json / jsonl / md / png / logs; no
# weights, world, TGO or compilation cache).
set -uo pipefail
OUT="${OUT:-gpu_scaling}"
LIMIT_S="${LIMIT_S:-480}"
WD="${WORKDIR:-/tmp/dgpo_scg}"
TEACHER="${TEACHER:-256x6x768}"
METHODS="${METHODS:-'kd','dgpo'}"
SLICES="${SLICES:-64x2x192 32x1x96,64x2x192 32x1x96,64x2x192,128x4x384}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$WD"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}" PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR="$WD/xla_cache"
t_end=$(( $(date +%s) + LIMIT_S ))

stamp() { while IFS= read -r l; do printf '%(%H:%M:%S)T %s\n' -1 "$l"; done; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import jax, flax, optax, orbax.checkpoint as o, ml_collections, bm25s
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'orbax', o.__version__, jax.devices())"
} 2>&1 | tee "$OUT/gpu.txt"

k=0
for slice in $SLICES; do
  k=$((k + 1))
  left=$(( t_end - $(date +%s) ))
  if [ "$left" -lt 30 ]; then echo "slice $k ($slice): not started, ${left}s left" | stamp | tee -a "$OUT/scaling_gpu.log"; break; fi
  students="($(echo "$slice" | sed "s/\([0-9x]*\)/'\1'/g"),)"
  echo "slice $k: teacher $TEACHER, students $students, methods ($METHODS), seed 0; ${left}s left" \
    | stamp | tee -a "$OUT/scaling_gpu.log"
  t0=$(date +%s)
  timeout --signal=INT --kill-after=20 "$left" "$PY" -m dgpo_jax.scaling \
    --config=configs/synthetic.py:scaling_gpu --workdir="$WD" \
    --config.scaling.teachers="('$TEACHER',)" --config.scaling.students="$students" \
    --config.scaling.methods="($METHODS,)" --config.scaling.seeds="(0,)" 2>&1 \
    | stamp | tee -a "$OUT/scaling_gpu.log"
  rc=${PIPESTATUS[0]}
  echo "slice $k: exit $rc after $(( $(date +%s) - t0 ))s" | stamp | tee -a "$OUT/scaling_gpu.log"
  [ "$rc" = 0 ] || break
  cp "$WD/scaling.json" "$OUT/scaling_$k.json"; cp "$WD/scaling.md" "$OUT/scaling_$k.md"
done

(cd "$WD" && find . \( -name checkpoints -o -name xla_cache -o -name models -o -name world \
   -o -name tgo -o -name tokenizer -o -name tensorboard \) -prune -o -type f \
   \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.log' \) \
   -print | tar czf "$OUT/workdir.tar.gz" -T -)
ls -la "$OUT"
