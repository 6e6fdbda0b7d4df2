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


def shutdown():
  """Leaves the distributed runtime; call it where every process stops together (the end
  of a run, a synchronized preemption, an error that all processes raise), rather than
  leaving it to interpreter exit. It does not remove every exit stall: process 0 still
  outlived the other by ~150 s after Python had finished in 1 of 25 config-mismatch exits
  under load (`benchmarks.multihost_exit`; 2 of 32 without this call)."""
  if jax.process_count() > 1:
    jax.distributed.shutdown()


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
    shutdown()  # every process sees the same digests, so all of them stop here
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


# ---- host-local rollouts ----
# A rollout is a host loop that alternates jitted decoding with retrieval, so hosts cannot
# march in lockstep: each process rolls out its own share of the rows on its own devices
# (with a local copy of the policy), retrieves for them itself, and the trajectories are
# gathered afterwards. With one process every function here is the identity.


def local_mesh(mesh):
  """The block of `mesh` that this process's devices form, same axis names."""
  from jax.sharding import Mesh
  devs = mesh.devices
  mine = np.vectorize(lambda d: d.process_index == jax.process_index())(devs)
  keep = [np.unique(i) for i in np.nonzero(mine)]
  sub = devs[np.ix_(*keep)]
  if sub.size != int(mine.sum()) or any(d.process_index != jax.process_index()
                                        for d in sub.flat):
    fail(f"mesh {dict(mesh.shape)}: process {jax.process_index()}'s devices do not form a "
         f"block of the mesh, so it cannot roll out on its own devices; order the mesh so "
         f"that each host's devices are contiguous")
  return Mesh(sub, mesh.axis_names, axis_types=mesh.axis_types)


def host_local(tree):
  """A copy of a (possibly multi-process) param tree on this process's devices only, each
  leaf sharded over the local block of its mesh by the same PartitionSpec."""
  if jax.process_count() == 1:
    return tree
  from jax.sharding import NamedSharding
  host = to_host(tree)
  meshes = {}

  def put(x, a):
    sh = getattr(a, "sharding", None)
    if isinstance(sh, NamedSharding):
      m = meshes.setdefault(id(sh.mesh), local_mesh(sh.mesh))
      return jax.device_put(x, NamedSharding(m, sh.spec))
    return jax.device_put(x, jax.local_devices()[0])

  return jax.tree.map(put, host, tree)


def process_share(n: int) -> slice:
  """This process's contiguous share of `n` rows (shares differ by at most one row)."""
  p, k = jax.process_count(), jax.process_index()
  return slice(k * n // p, (k + 1) * n // p)


def allgather_objects(items: list) -> list:
  """Every process's list of picklable items, concatenated in process order, on every
  process."""
  if jax.process_count() == 1:
    return list(items)
  import pickle
  from jax.experimental import multihost_utils
  blob = np.frombuffer(pickle.dumps(list(items)), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(blob.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:blob.size] = blob
  blobs = np.asarray(multihost_utils.process_allgather(padded))
  out = []
  for b, s in zip(blobs, sizes):
    out += pickle.loads(b[:int(s)].tobytes())
  return out
