"""Multi-controller start-up: `jax.distributed` from explicit flags, SLURM or a TPU slice,
and a check that every process runs the same config.

Explicit: --coordinator_address=HOST:PORT --num_processes=N --process_id=I (any cluster).
SLURM (`srun`, SLURM_NTASKS > 1) and Cloud TPU VMs (TPU_WORKER_HOSTNAMES with several hosts)
are detected by `jax.distributed.initialize()` itself. A single process needs nothing.
"""

import hashlib
import json
import os

import jax
import numpy as np

from dgpo_jax.utils.errors import fail


def _cluster_env() -> str:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
    return "slurm"
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if hosts and len(hosts.split(",")) > 1:
    return "tpu"
  return ""


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> int:
  """Starts the distributed runtime when there is more than one process; returns the
  process count. Must run before anything touches a device."""
  if coordinator_address or num_processes > 1:
    if not (coordinator_address and num_processes > 1 and 0 <= process_id < num_processes):
      fail(f"multi-process start needs --coordinator_address (got {coordinator_address!r}), "
           f"--num_processes > 1 (got {num_processes}) and 0 ≤ --process_id < num_processes "
           f"(got {process_id})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _cluster_env():
    jax.distributed.initialize()
  return jax.process_count()


def config_digest(config) -> str:
  return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str)
                        .encode()).hexdigest()


def check_same_config(config):
  """Fails on every process when the processes were given different configs."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  mine = np.frombuffer(bytes.fromhex(config_digest(config))[:8], np.int64)
  all_ = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
  if len(set(all_.tolist())) > 1:
    fail(f"processes disagree on the config (digests {sorted(set(all_.tolist()))}); every "
         f"host must run the same command and config files")


def barrier(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def to_host(tree):
  """A pytree of (possibly multi-process) arrays as full numpy arrays on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)
