"""Meshes, logical-axis rules and sharded param creation.

Params carry logical axis names (`axes` metadata, e.g. ("layers", "embed", "mlp")). A
rules table maps each logical name to a mesh axis (or a tuple of them, or None). A dim
whose size is not divisible by its mesh axes is replicated rather than failing, since GQA
models have fewer KV heads (2 for Qwen2.5-0.5B) than a typical tensor axis.
"""

from typing import Callable, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dgpo_jax.utils.errors import fail

MESH_AXES = ("data", "fsdp", "tensor")

# Default rules: FSDP shards the model dim, tensor parallelism the heads / mlp / vocab,
# batches shard over data and fsdp together.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


def parse_mesh(spec: str) -> dict:
  """Parses "data:2,fsdp:2,tensor:2" (axes not named get size 1; one size may be -1)."""
  sizes = {a: 1 for a in MESH_AXES}
  if not spec:
    return sizes
  for part in spec.split(","):
    if ":" not in part:
      fail(f"mesh {spec!r}: expected 'axis:size' items like 'data:4,tensor:2', got {part!r}")
    name, size = part.split(":", 1)
    name = name.strip()
    if name not in MESH_AXES:
      fail(f"mesh {spec!r}: unknown axis {name!r} (axes: {', '.join(MESH_AXES)})")
    try:
      sizes[name] = int(size)
    except ValueError:
      fail(f"mesh {spec!r}: size of {name!r} must be an integer, got {size!r}")
  return sizes


def make_mesh(spec="data:-1", devices: Optional[Sequence] = None) -> Mesh:
  """A Mesh over (data, fsdp, tensor) with Auto axis types.

  Args:
    spec: a string for `parse_mesh` or a dict of axis sizes; -1 takes the remaining devices.
    devices: defaults to all devices.

  Raises:
    DgpoError: when the sizes do not multiply to the device count.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = parse_mesh(spec) if isinstance(spec, str) else {**{a: 1 for a in MESH_AXES}, **spec}
  n = len(devices)
  free = [a for a in MESH_AXES if sizes[a] == -1]
  if len(free) > 1:
    fail(f"mesh {spec!r}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if n % known:
      fail(f"mesh {spec!r}: {n} devices are not divisible by {known}")
    sizes[free[0]] = n // known
  total = int(np.prod(list(sizes.values())))
  if total != n:
    fail(f"mesh {spec!r}: axis sizes multiply to {total} but there are {n} devices")
  arr = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
  # Auto axes let XLA insert collectives itself (jax 0.10 defaults make_mesh to Explicit,
  # which rejects sharded contracting dims without explicit out_sharding).
  return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes, shape, mesh: Mesh, rules=DEFAULT_RULES) -> P:
  """PartitionSpec for a value with logical `axes`, replicating non-divisible dims."""
  table = dict(rules)
  used: set = set()
  out = []
  for name, dim in zip(axes, shape):
    target = table.get(name) if name is not None else None
    if target is None:
      out.append(None)
      continue
    targets = (target,) if isinstance(target, str) else tuple(target)
    targets = tuple(t for t in targets if t not in used and mesh.shape[t] > 1)
    size = int(np.prod([mesh.shape[t] for t in targets])) if targets else 1
    if not targets or dim % size:
      out.append(None)
      continue
    used.update(targets)
    out.append(targets[0] if len(targets) == 1 else targets)
  return P(*out)


def _is_var(x):
  return isinstance(x, nnx.Variable)


def state_shardings(abstract_state, mesh: Mesh, rules=DEFAULT_RULES) -> dict:
  """NamedShardings for every Variable of an (abstract) nnx.State, from its `axes`.

  Returns:
    a pure dict (same nesting as `nnx.to_pure_dict(state)`) of NamedSharding.
  """

  def one(var):
    axes = var.get_metadata().get("axes")
    shape = var.get_value().shape
    if axes is None:
      axes = (None,) * len(shape)
    if len(axes) != len(shape):
      fail(f"param with axes {axes} has shape {shape}: rank mismatch")
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

  return nnx.to_pure_dict(jax.tree.map(one, abstract_state, is_leaf=_is_var))


def create_sharded(ctor: Callable[[], nnx.Module], mesh: Mesh, rules=DEFAULT_RULES):
  """Creates a module whose params are born sharded (never materialized on one device).

  Returns:
    (graphdef, params, shardings): params is a pure dict of sharded arrays (what
    `nnx.merge(graphdef, params)` takes), shardings the matching dict of NamedSharding.
  """
  graphdef, abs_state = nnx.split(nnx.eval_shape(ctor))
  shardings = state_shardings(abs_state, mesh, rules)

  def init():
    return nnx.to_pure_dict(nnx.state(ctor()))

  with jax.set_mesh(mesh):
    params = jax.jit(init, out_shardings=shardings)()
  return graphdef, params, shardings


def rules_of(config) -> tuple:
  """The config's `sharding_rules` as a hashable ((logical axis, mesh axes), ...) table
  (ml_collections hands back lists)."""
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.sharding_rules)


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding for a [batch, ...] array: batch over the rule's mesh axes."""
  target = dict(rules).get("batch")
  return NamedSharding(mesh, P(target, *([None] * (ndim - 1))))


def global_array(host_value, sharding: NamedSharding):
  """A global jax.Array from a host array every process holds in full (e.g. the step's
  batch, a pure function of the step): each process copies only the shards its own devices
  hold, so this works unchanged with one or many processes."""
  host_value = np.asarray(host_value)
  return jax.make_array_from_callback(host_value.shape, sharding, lambda idx: host_value[idx])


def shard_batch(batch, mesh: Mesh, rules=DEFAULT_RULES):
  """Places host arrays on the mesh, batch dimension sharded."""
  return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x), rules)),
                      batch)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def row_sharder(params, rules=DEFAULT_RULES) -> Optional[Callable]:
  """For a sampler whose params live on a mesh: `f(rows, ndim, axis) -> NamedSharding` that
  splits dimension `axis` (the rows of a KV cache or of logits) like the "batch" logical axis,
  replicating when the rows do not divide. None when there is nothing to split (params on one
  device, or batch axes of size 1), so each device decodes its own rows instead of every
  device decoding all of them."""
  sh = next((x.sharding for x in jax.tree.leaves(params)
             if isinstance(getattr(x, "sharding", None), NamedSharding)), None)
  if sh is None:
    return None
  mesh = sh.mesh

  def f(rows: int, ndim: int, axis: int) -> NamedSharding:
    axes, shape = [None] * ndim, [1] * ndim
    axes[axis], shape[axis] = "batch", rows
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

  return None if f(mesh.size, 1, 0).spec == P(None) else f
