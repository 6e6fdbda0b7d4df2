"""Ahead-of-time lowering of the training steps from abstract shapes (no weights).

`compile_steps(config)` builds the student, critic and teacher as shape-only pytrees with
their shardings on the configured mesh, then builds the method's steps with the very
builders its stages call (`pipeline.steps`, `rl_stage.build_rl`) and lowers each on its own
`spec`: the shapes and shardings a run passes (`tests/test_methods.py`,
`tests/test_rl_stage.py`). It reports XLA's
per-device memory and FLOP estimates, so a config can be checked before renting the
hardware it names.
"""

import dataclasses
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from flax import nnx

from dgpo_jax.models import config as model_config
from dgpo_jax.models.decoder import Decoder, ValueModel
from dgpo_jax.parallel import sharding
from dgpo_jax.pipeline import stages, steps
from dgpo_jax.pipeline.rl_stage import build_rl, ppo_config, rollout_rows
from dgpo_jax.train.step import Model, abstract, sds


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


def model_cfgs(config) -> tuple:
  """(student, teacher) shape configs of the run: the `model` and `teacher_model` presets, or
  on the synthetic world its `student` and `teacher` shapes at `tokenizer.vocab_size` pieces
  (the world's tokenizer is trained by `prepare` and can come out smaller: an upper bound)."""
  if "world" not in config:
    return model_cfg(config.model), model_cfg(config.teacher_model)
  from dgpo_jax.data.lm_data import SPECIAL_IDS
  from dgpo_jax.pipeline import prepare  # the shapes the synthetic pipeline builds
  ids = SPECIAL_IDS  # the world tokenizer's (`lm_data.train_sentencepiece`)
  tok = SimpleNamespace(vocab_size=config.tokenizer.vocab_size, eos_ids=(ids["eos_id"],),
                        pad_id=ids["pad_id"], bos_id=ids["bos_id"])
  return prepare.model_cfg(config, "student", tok), prepare.model_cfg(config, "teacher", tok)


def abstract_model(cfg, mesh, rules, ctor=Decoder, remat=True) -> Model:
  """A model of `cfg`'s shape on the mesh, its params ShapeDtypeStructs (nothing allocated)."""
  graphdef, abs_state = nnx.split(nnx.eval_shape(lambda: ctor(cfg, rngs=nnx.Rngs(0),
                                                                remat=remat)))
  shardings = sharding.state_shardings(abs_state, mesh, rules)
  return Model(cfg, graphdef, abstract(nnx.to_pure_dict(abs_state), shardings), shardings)


def planned_steps(config, mesh, rules, student: Model, teacher: Model, seq_len: int) -> list:
  """[(Step, spec kwargs)]: the jitted steps the method's stages run, built by the builders
  the stages call (`pipeline.steps`, `rl_stage.build_rl`), for trajectories of `seq_len`."""
  out, width = [], seq_len + 1
  for stage in stages.plan(config):
    if isinstance(stage, stages.KD):
      step, _, _ = steps.kd_update(config, student, teacher, mesh, stage.loss, stage.lam, 1)
      out.append((step, dict(width=width, loss_tokens=config.plan.get("loss_tokens", 0))))
    elif isinstance(stage, (stages.RL, stages.GKD)):
      pc = ppo_config(config, **stage.ppo_overrides())
      critic = (abstract_model(student.cfg, mesh, rules, ValueModel, config.model.remat)
                if stage.mode == "ppo" and pc.use_critic else None)
      run = build_rl(config, student, teacher if stage.kl_to_teacher else student, mesh,
                     rules, stage.mode, pc, critic)
      out += [(s, dict(width=width)) for s in (run.experience, run.update) if s is not None]
  return out


def compile_steps(config, mesh=None, seq_len: int = 0, rollout: bool = True):
  """Lowers and compiles the method's steps from abstract shapes; returns [Compiled].

  The KD update runs on `kd.batch_size` rows, with `plan.loss_tokens` loss positions (0:
  every position, an upper bound); the experience pass on every row a step rolls out
  (`steps.rl_rows`), the PPO update on `ppo.mini_batch` rows. "rollout_decode" is one
  generation segment of the agentic rollout: the sampler's jitted decode of
  `rollout.max_turn_tokens` tokens for the step's rows, sampled as RL samples
  (`steps.rl_sampling`), over a KV cache sized for the whole trajectory (a prompt of
  `plan.prompt_tokens`, every turn and observation), rows split over the data axes.
  """
  mesh = mesh or sharding.make_mesh(config.mesh)
  rules = sharding.rules_of(config)
  s_cfg, t_cfg = model_cfgs(config)
  if s_cfg.vocab_size > t_cfg.vocab_size:
    raise ValueError(f"student vocabulary {s_cfg.vocab_size} > teacher {t_cfg.vocab_size}")
  student = abstract_model(s_cfg, mesh, rules, remat=config.model.remat)
  teacher = abstract_model(t_cfg, mesh, rules, remat=config.model.remat)
  out = []
  for step, kw in planned_steps(config, mesh, rules, student, teacher,
                                seq_len or config.plan.seq_len):
    out.append(Compiled(step.name, step.lower(**kw).compile()))
  if rollout:
    out.append(Compiled("rollout_decode", _lower_decode(config, student, mesh, rules)))
  return out


def rollout_shape(config) -> tuple:
  """(rows, KV-cache tokens) of one RL step's rollout: the rows the method's on-policy stage
  rolls out (`rl_stage.rollout_rows`; `ppo.questions_per_step` for a method without one),
  and the cache `RolloutConfig.cache_needed` sizes for a prompt of `plan.prompt_tokens`."""
  from dgpo_jax.rollout.engine import RolloutConfig
  from dgpo_jax.utils import shapes
  rl = stages.on_policy(stages.plan(config))
  prompt = config.plan.get("prompt_tokens", 256)
  return (rollout_rows(config, rl) if rl else config.ppo.questions_per_step), shapes.pow2(
      RolloutConfig.from_config(config).cache_needed(prompt))


def _lower_decode(config, student: Model, mesh, rules):
  from dgpo_jax.models.decoder import init_cache
  from dgpo_jax.models.sampler import Sampler, SamplerState
  from dgpo_jax.utils import shapes
  rows, cache = rollout_shape(config)
  s = Sampler(student.graphdef, student.params, cache, 0, cpu_kernels=False)  # accelerators'
  shape = jax.eval_shape(lambda: SamplerState(init_cache(s.cfg, rows, cache),
                                              jnp.zeros((rows,), jnp.int32),
                                              jnp.zeros((rows, s.cfg.vocab_size), jnp.float32)))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # the rows split as the rollout's sampler splits them
  f = sharding.row_sharder(student.params, rules) or (lambda rows, ndim, axis: rep)
  st = SamplerState({k: sds(v.shape, v.dtype, f(rows, v.ndim, 1))
                     for k, v in shape.cache.items()},
                    sds((rows,), jnp.int32, f(rows, 1, 0)),
                    sds((rows, s.cfg.vocab_size), jnp.float32, f(rows, 2, 0)))
  return s._programs.decode.lower(
      student.params, None, st, jax.random.key(0), sds((rows,), jnp.bool_, f(rows, 1, 0)),
      sds((), jnp.int32, rep), sds((4, 3), jnp.int32, rep),
      sds((4,), jnp.int32, rep), sp=steps.rl_sampling(config),
      width=shapes.pow2(config.rollout.max_turn_tokens), attn_window=cache).compile()
