"""Ahead-of-time plan: will this config fit, and what does a step cost?

  python -m dgpo_jax.plan --config=configs/qwen05b.py --mesh=fsdp:8 [--device_memory_gb=80]
      [--seq_len=4096]

Lowers and compiles the steps the config's method runs (its KD update, PPO experience pass
and PPO update, or GKD's update), built by the same builders training calls, from abstract
shapes (no weights are read or allocated) on the given mesh, and prints per device: params,
optimizer state, activations and temporaries (XLA's buffer assignment), the rollout's KV cache
(computed from the shapes), and FLOPs per step (XLA's cost analysis). Mesh syntax:
`axis:size[,axis:size…]` over the axes data, fsdp, tensor; one size may be -1 (the rest of
the devices), e.g. `data:2,fsdp:4`. On a machine without the target accelerators, fake the
device count with XLA_FLAGS=--xla_force_host_platform_device_count=N (CPU shapes and
shardings are the same; the memory figures are XLA:CPU's, a close guide for GPU/TPU).

Exit status 2 for a bad config (mesh, batch divisibility), 3 when a step does not fit in
--device_memory_gb.
"""

import json
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("mesh", None, "Mesh spec; defaults to the config's `mesh`.")
flags.DEFINE_integer("seq_len", 0, "Tokens per trajectory (default: config.plan.seq_len).")
flags.DEFINE_float("device_memory_gb", 0.0, "Memory per device to check against (0 = skip).")
flags.DEFINE_string("out", None, "Also write the plan as JSON here.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

GB = 1024 ** 3


def _sharded_bytes(tree, shardings) -> int:
  """Bytes one device holds of a (shape) pytree under its shardings."""
  import jax
  leaves = jax.tree.leaves(jax.tree.map(
      lambda a, s: int(np.prod(s.shard_shape(a.shape))) * np.dtype(a.dtype).itemsize,
      tree, shardings))
  return int(sum(leaves))


def make_plan(config, mesh_spec=None, seq_len=0) -> dict:
  import jax
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import aot
  from dgpo_jax.pipeline.method import check_batches
  mesh = sharding.make_mesh(mesh_spec or config.mesh)
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  p = config.ppo
  check_batches(config, mesh)  # the same start-up check `main` makes
  seq = seq_len or config.plan.seq_len
  rules = sharding.rules_of(config)
  s_cfg, t_cfg = aot.model_cfgs(config)
  s, t = (aot.abstract_model(c, mesh, rules) for c in (s_cfg, t_cfg))
  student_b, teacher_b = _sharded_bytes(s.params, s.shardings), _sharded_bytes(t.params,
                                                                               t.shardings)
  rc = config.rollout
  rows, cache_len = aot.rollout_shape(config)
  kv = (s_cfg.n_layers * rows * s_cfg.n_kv_heads * cache_len * s_cfg.head_dim
        * 2 * np.dtype(s_cfg.jnp_dtype).itemsize) // dp
  steps = {}
  for c in aot.compile_steps(config, mesh, seq):
    mem = c.memory()
    total = (mem.get("argument_bytes", 0) + mem.get("output_bytes", 0)
             + mem.get("temp_bytes", 0) - mem.get("alias_bytes", 0))
    steps[c.name] = {"total_gb": total / GB, "temp_gb": mem.get("temp_bytes", 0) / GB,
                     "argument_gb": mem.get("argument_bytes", 0) / GB,
                     "tflops_per_step_per_device": c.flops() / 1e12}
  return {
      "mesh": {k: int(v) for k, v in mesh.shape.items()}, "devices": len(jax.devices()),
      "device_kind": jax.devices()[0].device_kind, "seq_len": seq,
      "rows_per_update": p.mini_batch, "rows_per_rollout": rows,
      "rows_per_kd_update": config.kd.batch_size,
      "rollout_cache_tokens": cache_len,
      "per_device_gb": {
          "student_params": student_b / GB, "teacher_params": teacher_b / GB,
          "critic_params": student_b / GB,
          "optimizer_actor_and_critic": 4 * student_b / GB,  # Adam m and v for both
          "rollout_kv_cache": kv / GB},
      "steps": steps,
      "rollout_turns": rc.max_turns,
  }


def check_fit(plan: dict, device_memory_gb: float):
  """(fits, message) for the plan's largest compiled step (the rollout decode step's
  arguments include its KV cache)."""
  name, worst = max(((n, s["total_gb"]) for n, s in plan["steps"].items()),
                    key=lambda x: x[1])
  if worst > device_memory_gb:
    return False, (f"DOES NOT FIT: {name} needs {worst:.2f} GB per device "
                   f"> {device_memory_gb:.2f} GB")
  return True, f"fits: {name}, the largest step, needs {worst:.2f} GB ≤ {device_memory_gb:.2f} GB"


def main(argv):
  from dgpo_jax.utils import cli
  plan = cli.run(make_plan, argv, FLAGS.config, FLAGS.mesh, FLAGS.seq_len)
  print(f"mesh {plan['mesh']} on {plan['devices']} × {plan['device_kind']}; "
        f"{plan['rows_per_update']} rows × {plan['seq_len']} tokens per update; rollout "
        f"{plan['rows_per_rollout']} rows × {plan['rollout_cache_tokens']}-token KV cache")
  for k, v in plan["per_device_gb"].items():
    print(f"  {k:<28} {v:8.2f} GB/device")
  for name, s in plan["steps"].items():
    # XLA counts a while loop's body once: the decode segment's figure is per token
    per = " per token" if name == "rollout_decode" else ""
    print(f"  step {name:<22} {s['total_gb']:8.2f} GB/device (activations+temporaries "
          f"{s['temp_gb']:.2f} GB)  {s['tflops_per_step_per_device']:.4f} TFLOP/device{per}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(plan, f, indent=2)
  if FLAGS.device_memory_gb:
    fits, msg = check_fit(plan, FLAGS.device_memory_gb)
    print(msg, file=sys.stdout if fits else sys.stderr)
    if not fits:
      sys.exit(3)


if __name__ == "__main__":
  app.run(main)
