#!/bin/bash
# DGPO on a Cloud TPU VM slice: the same command on every worker.
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/qwen05b.py gs://bucket/dgpo_qwen05b [--config.x=y ...]
#
# jax.distributed.initialize() discovers the slice's workers (TPU_WORKER_HOSTNAMES) itself.
# The repository must be cloned at ~/dgpo-jax on every worker with `pip install -r
# requirements.txt` done there (jax[tpu]==0.10.2 instead of jax/jaxlib). The workdir should
# be a path every worker sees (a GCS bucket through orbax, or a shared filesystem).
set -euo pipefail
TPU=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd ~/dgpo-jax && python -m dgpo_jax.main --config=$CONFIG --workdir=$WORKDIR $*"
