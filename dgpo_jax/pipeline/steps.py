"""The jitted steps of the KD and RL stages, built in one place from (config, models, mesh):
`pipeline.method` and `pipeline.rl_stage` call them and `plan` (through `pipeline.aot`)
lowers the very same `Step` objects on their `spec`, so the shapes and shardings it reports
are the ones training passes (`tests/test_methods.py`, `tests/test_rl_stage.py`)."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dgpo_jax.models.sampler import SamplingParams
from dgpo_jax.parallel import sharding
from dgpo_jax.rl import distill, ppo
from dgpo_jax.train.loop import FitConfig, optimizer
from dgpo_jax.train.step import (KD_CACHED_FIELDS, KD_FIELDS, Model, Step, abstract,
                                 batch_shardings, sds, train_update)


def kd_loss(config, student: Model, teacher: Model, loss: str, lam: float, total_steps: int):
  """The KD stage's loss (`distill.make_loss`) with the config's kernel settings."""
  k, kern = config.kd, config.kernel
  return distill.make_loss(student.graphdef, teacher.graphdef, loss, lam=lam,
                           alpha=k.skew_alpha, total_steps=total_steps, impl=kern.impl,
                           chunk=kern.chunk, block=kern.block)


def kd_fit_config(config, steps_per_epoch: int, epochs: int) -> FitConfig:
  """The KD run through `epochs` epochs, along the schedule of all `kd.epochs`."""
  k, total = config.kd, config.kd.epochs * steps_per_epoch
  return FitConfig(steps=epochs * steps_per_epoch, schedule_steps=total, lr=k.lr,
                   warmup_steps=min(k.warmup_steps, total // 2),
                   weight_decay=k.weight_decay,
                   log_every=config.train.log_every, ckpt_every=steps_per_epoch,
                   keep_ckpts=config.train.keep_ckpts)


def kd_update(config, student: Model, teacher: Model, mesh, loss: str, lam: float,
              steps_per_epoch: int):
  """The KD update a `kd` stage's `fit` runs, on `kd.batch_size` rows (`train_update`'s
  (Step, state shardings, state shape))."""
  total = config.kd.epochs * steps_per_epoch
  tx = optimizer(kd_fit_config(config, steps_per_epoch, 1))
  fields = KD_CACHED_FIELDS if config.kd.get("cache_teacher", False) else KD_FIELDS
  return train_update("kd_update", student, tx, mesh,
                      kd_loss(config, student, teacher, loss, lam, total), fields,
                      config.kd.batch_size, teacher)


# ----------------------------------------------------------------------------- on-policy RL

def rl_rows(config, advantage: str) -> int:
  """Rows one RL step rolls out and passes to the experience pass: every question once, or
  `group_size` times for GRPO's group-normalized advantages."""
  p = config.ppo
  return p.questions_per_step * (p.group_size if advantage == "grpo" else 1)


def rl_sampling(config) -> SamplingParams:
  """How an RL step samples its rollouts (`ppo.temperature`, `ppo.top_p`)."""
  p = config.ppo
  if p.temperature == 0:
    return SamplingParams(greedy=True)
  return SamplingParams(temperature=p.temperature, top_p=p.top_p)


EXPERIENCE_FIELDS = {"tokens": 2, "mask": 2, "gen": 2, "last": 2, "score": 1, "group": 1}
UPDATE_FIELDS = ("old_logp", "adv", "returns", "old_values", "gen", "vmask")


def experience_step(actor: Model, critic: Optional[Model], other: Model, pc, mesh, rows: int,
                    num_groups: int, rules=sharding.DEFAULT_RULES) -> Step:
  """The PPO experience pass on all `rows` of a step; `spec(width)`."""
  b_sh = batch_shardings(mesh, EXPERIENCE_FIELDS, rules)
  crit_sh = critic.shardings if critic is not None else None
  fn = ppo.make_experience(actor.graphdef, critic.graphdef if critic else None, other.graphdef,
                           pc, num_groups=num_groups,
                           in_shardings=(actor.shardings, crit_sh, other.shardings, b_sh))

  def spec(width: int):
    batch = {k: sds((rows, width)[:nd], jnp.float32 if k == "score" else jnp.int32, b_sh[k])
             for k, nd in EXPERIENCE_FIELDS.items()}
    return (actor.abstract(), critic.abstract() if critic is not None else None,
            other.abstract(), batch)

  return Step("ppo_experience", fn, spec, b_sh)


def update_fields(pc) -> dict:
  """The PPO mini-batch's fields and ranks (`ref_logp` with a KL loss)."""
  f = {"tokens": 2, "mask": 2, **{k: 2 for k in UPDATE_FIELDS}}
  if pc.kl_loss_coef > 0:
    f["ref_logp"] = 2
  return f


def ppo_update_step(actor: Model, critic: Optional[Model], txs, pc, state_shape, state_sh,
                    mesh, mini_batch: int, rules=sharding.DEFAULT_RULES) -> Step:
  """The PPO mini-batch update, state donated; `spec(width)` (tokens `width` wide, the
  per-target fields one less)."""
  fields = update_fields(pc)
  b_sh = batch_shardings(mesh, fields, rules)
  fn = ppo.make_update(actor.graphdef, critic.graphdef if critic else None, txs["actor"],
                       txs["critic"], pc, state_sh, b_sh)

  def spec(width: int):
    batch = {k: sds((mini_batch, width if k in ("tokens", "mask") else width - 1),
                     jnp.int32 if k in ("tokens", "mask") else jnp.float32, b_sh[k])
             for k in fields}
    return abstract(state_shape, state_sh), batch, jax.random.key(0)

  # A mini-batch drawn from the step's rows, placed as the update expects: a gather from a
  # sharded array otherwise comes back replicated, and every device would run every row.
  select = jax.jit(lambda tree, idx: jax.tree.map(lambda x: x[idx], tree), out_shardings=b_sh)
  return Step("ppo_update", fn, spec, b_sh, select)


def mini_batches(rows: int, mini_batch: int, epochs: int, rng) -> list:
  """Index arrays of `epochs` shuffled passes over `rows` in slices of `mini_batch`."""
  out = []
  for _ in range(epochs):
    perm = rng.permutation(rows)
    out += [np.asarray(perm[s:s + mini_batch], np.int32) for s in range(0, rows, mini_batch)]
  return out
