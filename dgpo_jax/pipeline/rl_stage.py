"""On-policy stages: PPO/DGPO/GRPO with rollouts through the retriever, and GKD.

The host loop: sample the step's questions (a pure function of seed and step, so a resumed
run sees the same ones), roll the current policy out, score, run the experience pass, then
PPO epochs over mini-batches of the jitted update. Checkpoints every `ckpt_every` steps and
at the end; validation EM (greedy, dev subset) every `val_every` steps; metrics per step to
`metrics_<name>.jsonl` (and TensorBoard when available).
"""

import dataclasses
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgpo_jax.data import lm_data
from dgpo_jax.models.decoder import ValueModel
from dgpo_jax.parallel import distributed, sharding
from dgpo_jax.pipeline import steps
from dgpo_jax.rl import batch as rl_batch
from dgpo_jax.rl import distill, ppo
from dgpo_jax.rollout.engine import RolloutEngine
from dgpo_jax.train import lm, loop
from dgpo_jax.train.step import Model, place
from dgpo_jax.utils import shapes
from dgpo_jax.utils.errors import fail


def updates_per_step(p, rows: int) -> int:
  """Optimizer updates in one RL step: `p.epochs` passes over the step's `rows` in
  mini-batches of `p.mini_batch`."""
  return p.epochs * (rows // p.mini_batch)


def rollout_rows(config, stage) -> int:
  """Rows an on-policy stage (`stages.RL` or `stages.GKD`) rolls out per step."""
  return steps.rl_rows(config, ppo_config(config, **stage.ppo_overrides()).advantage)


def check_rows(p, rows: int):
  """The step's rows must split into mini-batches, and those into micro-batches."""
  if rows % p.mini_batch or p.mini_batch % p.micro_batches:
    fail(f"ppo: questions_per_step × group size ({rows}) must divide into mini_batch "
         f"({p.mini_batch}), and mini_batch into micro_batches ({p.micro_batches})")


def optimizers(p, updates_per_step: int):
  """(actor, critic) optimizers from the `ppo` config block: AdamW with `p.b2` and
  `p.weight_decay` on `p.lr_schedule`, warmed up over `p.*_warmup_ratio` of `p.steps` RL steps,
  the schedule advancing once per RL step (`updates_per_step` optimizer updates)."""
  make = lambda lr, ratio: lm.make_optimizer(lr, p.steps, int(ratio * p.steps), p.weight_decay,
                                             p.grad_clip, p.b2, p.lr_schedule, updates_per_step)
  try:
    return make(p.actor_lr, p.actor_warmup_ratio), make(p.critic_lr, p.critic_warmup_ratio)
  except ValueError as e:
    fail(f"config ppo.lr_schedule: {e}")


def ppo_config(c, **over) -> ppo.PPOConfig:
  p = c.ppo
  kw = dict(clip=p.clip, vf_clip=p.vf_clip, ent_coef=p.ent_coef, gamma=p.gamma, lam=p.lam,
            beta=p.beta, kl_estimator=p.kl_estimator, kl_rows=p.kl_rows,
            advantage=p.advantage, grpo_std=p.grpo_std, micro_batches=p.micro_batches,
            critic_positions=p.critic_positions, kl_loss_estimator=p.kl_loss_estimator,
            impl=c.kernel.impl, chunk=c.kernel.chunk, block=c.kernel.block)
  kw.update(over)
  return ppo.PPOConfig(**kw)


def make_critic(student: Model, mesh, rules, seed: int, head_init: str = "zeros") -> Model:
  """The critic: the student's trunk (copied) and a scalar head (`ValueModel` head_init)."""
  gd, params, sh = sharding.create_sharded(
      lambda: ValueModel(student.cfg, rngs=nnx.Rngs(seed), head_init=head_init), mesh, rules)
  params = dict(params, trunk=jax.tree.map(jnp.copy, student.params))
  return Model(student.cfg, gd, params, sh)


def _fresh(tree):
  # New buffers for the (donated) train state: the params it starts from may also serve,
  # unchanged, as the PPO reference model.
  return jax.tree.map(jnp.copy, tree)


def state_shardings(state_shape, txs, param_sh, mesh):
  """Shardings of an on-policy train state: params as given, optimizer moments following
  their params, counts and the step replicated."""
  rep = sharding.replicated(mesh)
  out = {"step": rep}
  for k in ("actor", "critic"):
    if k in state_shape:
      sub = lm.state_shardings(txs[k], {"opt_state": state_shape[k]["opt_state"]},
                               param_sh[k], mesh)
      out[k] = {"params": param_sh[k], "opt_state": sub["opt_state"]}
  return out


@dataclasses.dataclass
class RLRun:
  """What one on-policy run steps with: its train state and layout, and its jitted steps."""
  mode: str  # "ppo" (also DGPO and GRPO) or "gkd"
  rows: int  # rows rolled out per step
  shape: dict  # train-state shapes
  state_sh: dict
  init: object  # (student params[, critic params]) -> state
  args: tuple
  rollout_sh: dict  # how a step's rollout arrays are placed
  critic: Optional[Model] = None
  experience: Optional[steps.Step] = None
  update: Optional[steps.Step] = None  # PPO mini-batch update, or GKD's (tokens, mask, loss_mask)

  def policy(self, state) -> dict:
    """The params being trained, in a train state of this run."""
    return state["params"] if self.mode == "gkd" else state["actor"]["params"]


def build_rl(config, student: Model, other: Model, mesh, rules, mode="ppo", pc=None,
             critic: Optional[Model] = None) -> RLRun:
  """The train state and jitted steps of an on-policy run; `plan` builds the same (with
  abstract models). `critic`: made from the student (`make_critic`) when None and the
  advantage estimator needs one."""
  c = config.ppo
  pc = pc or ppo_config(config)
  rows = steps.rl_rows(config, pc.advantage)
  check_rows(c, rows)
  tx_a, tx_c = optimizers(c, 1 if mode == "gkd" else updates_per_step(c, rows))
  rollout_sh = steps.batch_shardings(mesh, steps.EXPERIENCE_FIELDS, rules)
  if mode == "gkd":
    loss_fn = distill.make_loss(student.graphdef, other.graphdef, "jsd",
                                alpha=config.kd.jsd_beta, impl=pc.impl, chunk=pc.chunk,
                                block=pc.block)
    update, st_sh, shape = steps.train_update(
        "gkd_update", student, tx_a, mesh, loss_fn,
        {k: 2 for k in ("tokens", "mask", "loss_mask")}, rows, other, rules)
    init = lambda a: lm.init_state(_fresh(a), tx_a)
    return RLRun(mode, rows, shape, st_sh, init, (student.params,), rollout_sh, update=update)
  if not pc.use_critic:
    critic = None
  elif critic is None:
    critic = make_critic(student, mesh, rules, config.seed, c.critic_head_init)
  txs = {"actor": tx_a, "critic": tx_c}
  param_sh = {"actor": student.shardings}
  if critic is not None:
    param_sh["critic"] = critic.shardings
  init = lambda a, cr=None: ppo.init_state(_fresh(a), cr, tx_a, tx_c)
  args = (student.params,) + ((critic.params,) if critic is not None else ())
  shape = jax.eval_shape(init, *args)
  st_sh = state_shardings(shape, txs, param_sh, mesh)
  exp = steps.experience_step(student, critic, other, pc, mesh, rows, c.questions_per_step,
                              rules)
  upd = steps.ppo_update_step(student, critic, txs, pc, shape, st_sh, mesh, c.mini_batch, rules)
  return RLRun(mode, rows, shape, st_sh, init, args, rollout_sh, critic, exp, upd)


def _ppo_step(run: RLRun, config, state, dev, other: Model, step: int, rng):
  """Experience pass, then `ppo.epochs` shuffled passes of mini-batch updates. Returns
  (state, metrics, why the step was skipped or "")."""
  c = config.ppo
  critic_p = state["critic"]["params"] if "critic" in state else None
  exp, em = run.experience(state["actor"]["params"], critic_p, other.params, dev)
  m = {k: float(v) for k, v in jax.device_get(em).items()}
  if m["adv_finite"] < 1:
    return state, m, "non-finite advantages"
  full = {**{k: dev[k] for k in ("tokens", "mask")}, **exp}
  ums = []
  for sel in steps.mini_batches(run.rows, c.mini_batch, c.epochs,
                                np.random.default_rng([config.seed, step])):
    state, um = run.update(state, run.update.select(full, sel), rng)
    ums.append(um)
  m.update({k: float(np.mean([float(u[k]) for u in ums])) for k in ums[0]})
  return state, m, "non-finite loss or gradient" if m["skipped"] >= 1 else ""


def _gkd_step(run: RLRun, state, dev, other: Model, rng):
  """One on-policy JSD update on the step's rollouts (GKD)."""
  batch = {"tokens": dev["tokens"], "mask": dev["mask"], "loss_mask": dev["gen"]}
  state, um = run.update(state, batch, rng, other.params)
  m = {k: float(v) for k, v in jax.device_get(um).items()}
  return state, m, "non-finite loss or gradient" if m["skipped"] >= 1 else ""


def _rollout_batch(config, run: RLRun, engine, state, train_q, step, rng, sp, tok):
  """The step's questions rolled out by the current policy, as arrays on the mesh."""
  c = config.ppo
  n_samples = run.rows // c.questions_per_step
  idx = lm_data.batch_indices(len(train_q), c.questions_per_step, step, config.seed + 11)
  qs = [train_q[i] for i in idx for _ in range(n_samples)]
  engine.sampler.params = distributed.host_local(run.policy(state))
  trajs = engine.run_sharded([q["question"] for q in qs], jax.random.fold_in(rng, step), sp)
  longest = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
  # Widths of 2^k or 1.5·2^k (≤ 1/3 padding): each new width compiles the experience
  # pass and the update again, a few seconds each on CPU.
  arr = rl_batch.from_trajectories(trajs, [q["golden_answers"] for q in qs], tok.pad_id,
                                   width=shapes.pow2_or_1p5(longest + 1, minimum=64))
  arr["group"] = np.repeat(np.arange(c.questions_per_step), n_samples).astype(np.int32)
  m = rl_batch.rollout_metrics(trajs, arr["score"])
  m["rows"] = float(len(trajs))  # behind `em`: the interval of the first/last change
  return place(arr, run.rollout_sh), m, float(arr["mask"].sum())


def run_rl(name, config, workdir, student: Model, other: Model, engine_args, train_q, mesh,
           rules, log, mode="ppo", evaluate=None, engine=None, **ppo_over):
  """Trains the student on-policy. mode: "ppo" (also DGPO and GRPO, by `ppo_over`) or "gkd".

  Args:
    other: the KL target (teacher for DGPO, reference for PPO, teacher for GKD).
    engine_args: (tokenizer, retriever, RolloutConfig).
    evaluate: `f(params) -> summary dict` for periodic validation, or None.
    engine: the RolloutEngine to roll out with (tests: a scripted policy); by default one
      over the student's own sampler.
  Returns:
    (final student params, last metrics row; {} when the run had already finished).
  """
  c = config.ppo
  run = build_rl(config, student, other, mesh, rules, mode, ppo_config(config, **ppo_over))
  tok, retriever, rc = engine_args
  init = lambda: jax.jit(run.init, out_shardings=run.state_sh)(*run.args)
  ckpt, start, state = loop.restore_or_init(name, workdir, run.shape, run.state_sh, init,
                                            config.train.keep_ckpts, log)
  if engine is None:
    # measured on a sample of the questions; the margin covers longer ones
    engine = RolloutEngine.for_model(student.graphdef, run.policy(state), tok, retriever, rc,
                                     [q["question"] for q in train_q[:256]], margin=32)
  sp = steps.rl_sampling(config)
  rng = jax.random.key(config.seed + 101)

  def step_fn(state, step):
    t0 = time.time()
    dev, m, tokens = _rollout_batch(config, run, engine, state, train_q, step, rng, sp, tok)
    t_roll = time.time() - t0
    if mode == "gkd":
      state, um, why = _gkd_step(run, state, dev, other, rng)
    else:
      state, um, why = _ppo_step(run, config, state, dev, other, step, rng)
    m.update(um, step_time_s=time.time() - t0, rollout_time_s=t_roll, tokens_in=tokens)
    if evaluate is not None and c.val_every and ((step + 1) % c.val_every == 0
                                                 or step + 1 == c.steps):
      figures = evaluate(run.policy(state))
      m.update({f"val_{k}": v for k, v in figures.items() if isinstance(v, float)})
      m.update({f"val_em_{f}": v for f, v in figures.get("em_by_family", {}).items()})
    return state, m, why

  fc = loop.FitConfig(steps=c.steps, lr=c.actor_lr, log_every=config.train.log_every,
                      ckpt_every=config.train.ckpt_every, keep_ckpts=config.train.keep_ckpts,
                      max_bad_steps=c.max_bad_steps, metrics_every_step=True)
  summary = lambda m: (f"em {m['em']:.3f} kl {m.get('kl', 0):.4f} "
                       f"searches {m['searches_per_question']:.2f}")
  state, last = loop.run_loop(name, workdir, ckpt, state, start, fc, step_fn, config.seed, log,
                              summary)
  return run.policy(state), last
