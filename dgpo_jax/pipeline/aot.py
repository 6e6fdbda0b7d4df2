"""Ahead-of-time lowering of the training steps from abstract shapes (no weights).

`compile_steps(config)` builds the student, critic and teacher as shape-only pytrees with
their shardings on the configured mesh, then lowers and compiles the KD update and the PPO
experience pass and update for one mini-batch of `ppo.mini_batch` rows × `seq_len` tokens.
It reports XLA's per-device memory and FLOP estimates, so a config can be checked before
renting the hardware it names.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dgpo_jax.models import config as model_config
from dgpo_jax.models.decoder import Decoder, ValueModel
from dgpo_jax.parallel import sharding
from dgpo_jax.pipeline.rl_stage import (optimizers, ppo_config, state_shardings,
                                        updates_per_step)
from dgpo_jax.rl import distill, ppo
from dgpo_jax.train import lm


@dataclasses.dataclass
class Compiled:
  name: str
  compiled: object

  def memory(self) -> dict:
    m = self.compiled.memory_analysis()
    if m is None:
      return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {k.replace("_size_in_bytes", "_bytes"): int(getattr(m, k, 0)) for k in keys}

  def flops(self) -> float:
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def model_cfg(m) -> model_config.ModelConfig:
  """The shape config of a model section (`preset` name plus dtypes)."""
  return model_config.preset(m.preset, param_dtype=m.param_dtype, dtype=m.dtype)


def abstract_model(cfg, mesh, rules, ctor=Decoder, remat=True):
  graphdef, abs_state = nnx.split(nnx.eval_shape(lambda: ctor(cfg, rngs=nnx.Rngs(0),
                                                                remat=remat)))
  shardings = sharding.state_shardings(abs_state, mesh, rules)
  params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        nnx.to_pure_dict(abs_state), shardings)
  return graphdef, params, shardings


def _sds(shape, dtype, sh):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)


def compile_steps(config, mesh=None, seq_len: int = 0,
                  steps=("kd", "experience", "ppo", "rollout")):
  """Lowers and compiles the named steps from abstract shapes; returns [Compiled].

  "rollout" is one generation segment of the agentic rollout: the sampler's jitted decode
  of `rollout.max_turn_tokens` tokens for `ppo.questions_per_step × group_size` rows over a
  KV cache sized for the whole trajectory (prompt + every turn and observation), rows split
  over the data axes.
  """
  mesh = mesh or sharding.make_mesh(config.mesh)
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.sharding_rules)
  s_cfg, t_cfg = model_cfg(config.model), model_cfg(config.teacher_model)
  if s_cfg.vocab_size > t_cfg.vocab_size:
    raise ValueError(f"student vocabulary {s_cfg.vocab_size} > teacher {t_cfg.vocab_size}")
  s_gd, s_p, s_sh = abstract_model(s_cfg, mesh, rules, remat=config.model.remat)
  t_gd, t_p, t_sh = abstract_model(t_cfg, mesh, rules, remat=config.model.remat)
  c_gd, c_p, c_sh = abstract_model(s_cfg, mesh, rules, ValueModel, remat=config.model.remat)
  rows = config.ppo.mini_batch
  t = seq_len or config.plan.seq_len
  bsh = lambda nd: sharding.batch_sharding(mesh, nd, rules)
  tok = lambda w: _sds((rows, w), jnp.int32, bsh(2))
  f32 = lambda w: _sds((rows, w), jnp.float32, bsh(2))
  out = []
  pc = ppo_config(config)
  k = config.kd
  if "kd" in steps:
    tx = lm.make_optimizer(k.lr, 1000)
    shape = jax.eval_shape(lambda p: lm.init_state(p, tx), s_p)
    st_sh = lm.state_shardings(tx, shape, s_sh, mesh)
    state = jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), shape, st_sh)
    loss_fn = distill.make_loss(s_gd, t_gd, "ce_fkl", lam=k.lam, impl=config.kernel.impl,
                                chunk=config.kernel.chunk, block=config.kernel.block)
    bsh_kd = {n: bsh(2) for n in ("tokens", "mask", "loss_mask")}
    upd = lm.make_update(s_gd, tx, st_sh, bsh_kd, loss_fn, t_sh)
    batch = {n: tok(t + 1) for n in ("tokens", "mask", "loss_mask")}
    out.append(Compiled("kd_update", upd.lower(state, batch, jax.random.key(0), t_p).compile()))
  if "experience" in steps:
    exp = ppo.make_experience(s_gd, c_gd, t_gd, pc, num_groups=config.ppo.questions_per_step)
    batch = {"tokens": tok(t + 1), "mask": tok(t + 1), "gen": tok(t + 1), "last": tok(t + 1),
             "score": _sds((rows,), jnp.float32, bsh(1)),
             "group": _sds((rows,), jnp.int32, bsh(1))}
    out.append(Compiled("ppo_experience", exp.lower(s_p, c_p, t_p, batch).compile()))
  if "ppo" in steps:
    p = config.ppo
    tx_a, tx_c = optimizers(p, updates_per_step(p, pc.advantage))
    shape = jax.eval_shape(lambda a, c: ppo.init_state(a, c, tx_a, tx_c), s_p, c_p)
    st_sh = state_shardings(shape, {"actor": tx_a, "critic": tx_c},
                            {"actor": s_sh, "critic": c_sh}, mesh)
    state = jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), shape, st_sh)
    b_sh = {"tokens": bsh(2), "mask": bsh(2), **{n: bsh(2) for n in
                                                 ("old_logp", "adv", "returns", "old_values",
                                                  "gen", "vmask")}}
    upd = ppo.make_update(s_gd, c_gd, tx_a, tx_c, pc, st_sh, b_sh)
    batch = {"tokens": tok(t + 1), "mask": tok(t + 1),
             **{n: f32(t) for n in ("old_logp", "adv", "returns", "old_values", "gen",
                                    "vmask")}}
    out.append(Compiled("ppo_update", upd.lower(state, batch, jax.random.key(0)).compile()))
  if "rollout" in steps:
    out.append(Compiled("rollout_decode", _lower_decode(config, s_gd, s_p, mesh, rules)))
  return out


def rollout_shape(config) -> tuple:
  """(rows, KV-cache tokens) of one rollout batch: every question's group, and the cache
  `RolloutConfig.cache_needed` sizes for a prompt of `plan.prompt_tokens`."""
  from dgpo_jax.models.sampler import bucket
  from dgpo_jax.rollout.engine import RolloutConfig
  prompt = config.plan.get("prompt_tokens", 256)
  return config.ppo.questions_per_step * config.ppo.group_size, bucket(
      RolloutConfig.from_config(config).cache_needed(prompt))


def _lower_decode(config, graphdef, params, mesh, rules):
  from dgpo_jax.models.decoder import init_cache
  from dgpo_jax.models.sampler import Sampler, SamplerState, SamplingParams, bucket
  r = config.rollout
  rows, cache = rollout_shape(config)
  s = Sampler(graphdef, params, cache, 0, cpu_kernels=False)  # the accelerators' program
  shape = jax.eval_shape(lambda: SamplerState(init_cache(s.cfg, rows, cache),
                                              jnp.zeros((rows,), jnp.int32),
                                              jnp.zeros((rows, s.cfg.vocab_size), jnp.float32)))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # the rows split as the rollout's sampler splits them
  f = sharding.row_sharder(params, rules) or (lambda rows, ndim, axis: rep)
  st = SamplerState({k: _sds(v.shape, v.dtype, f(rows, v.ndim, 1))
                     for k, v in shape.cache.items()},
                    _sds((rows,), jnp.int32, f(rows, 1, 0)),
                    _sds((rows, s.cfg.vocab_size), jnp.float32, f(rows, 2, 0)))
  return s._decode.lower(
      params, None, st, jax.random.key(0), _sds((rows,), jnp.bool_, f(rows, 1, 0)),
      _sds((), jnp.int32, rep), _sds((4, 3), jnp.int32, rep),
      _sds((4,), jnp.int32, rep), sp=SamplingParams(temperature=r.temperature, top_p=r.top_p),
      width=bucket(r.max_turn_tokens), attn_window=cache).compile()
