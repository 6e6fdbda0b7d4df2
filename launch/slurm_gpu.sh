#!/bin/bash
# DGPO on SLURM GPU nodes: one process per node, all local GPUs per process.
#
#   sbatch --nodes=2 launch/slurm_gpu.sh configs/qwen05b.py /ckpt/dgpo_qwen05b [--config.x=y ...]
#
# jax.distributed.initialize() reads the SLURM environment (SLURM_NTASKS, SLURM_PROCID, the
# node list) itself; every task runs the same command. Rerunning the same sbatch line resumes
# from the last checkpoint in WORKDIR (which must be on a filesystem all nodes share).
#SBATCH --job-name=dgpo
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch launch/slurm_gpu.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: sbatch launch/slurm_gpu.sh CONFIG WORKDIR [overrides...]}
shift 2
# Check the plan fits before spending the allocation (exit 3 if it does not).
srun --ntasks=1 --nodes=1 python -m dgpo_jax.plan --config="$CONFIG" --device_memory_gb=80
srun python -m dgpo_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
