"""On-policy stages: PPO/DGPO/GRPO with rollouts through the retriever, and GKD.

The host loop: sample the step's questions (a pure function of seed and step, so a resumed
run sees the same ones), roll the current policy out, score, run the experience pass, then
PPO epochs over mini-batches of the jitted update. Checkpoints every `ckpt_every` steps and
at the end; validation EM (greedy, dev subset) every `val_every` steps; metrics per step to
`metrics_<name>.jsonl` (and TensorBoard when available).
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgpo_jax.data import lm_data
from dgpo_jax.models.decoder import ValueModel
from dgpo_jax.models.sampler import SamplingParams, fine_bucket
from dgpo_jax.parallel import distributed, sharding
from dgpo_jax.rl import batch as B
from dgpo_jax.rl import distill, ppo
from dgpo_jax.rollout.engine import RolloutEngine
from dgpo_jax.train import lm
from dgpo_jax.utils.checkpoint import Checkpointer, abstract_like
from dgpo_jax.utils import preemption
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import MetricsWriter, Progress


@dataclasses.dataclass
class Model:
  """A model on the mesh: its config, graphdef, params (pure dict) and their shardings."""
  cfg: object
  graphdef: object
  params: dict
  shardings: dict


def updates_per_step(p, advantage: str) -> int:
  """Optimizer updates in one RL step: `p.epochs` passes over the rollout's rows
  (questions × group size for GRPO) in mini-batches of `p.mini_batch`."""
  rows = p.questions_per_step * (p.group_size if advantage == "grpo" else 1)
  return p.epochs * (rows // p.mini_batch)


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
  for k in ("actor", "critic", "policy"):
    if k in state_shape:
      sub = lm.state_shardings(txs[k], {"opt_state": state_shape[k]["opt_state"]},
                               param_sh[k], mesh)
      out[k] = {"params": param_sh[k], "opt_state": sub["opt_state"]}
  return out


def run_rl(name, config, workdir, student: Model, other: Model, engine_args, train_q, mesh,
           rules, log, mode="ppo", evaluate=None, **ppo_over):
  """Trains the student on-policy. mode: "ppo" (also DGPO and GRPO, by `ppo_over`) or "gkd".

  Args:
    other: the KL target (teacher for DGPO, reference for PPO, teacher for GKD).
    engine_args: (tokenizer, retriever, RolloutConfig).
    evaluate: `f(params) -> summary dict` for periodic validation, or None.
  Returns:
    (final student params, last metrics).
  """
  c = config.ppo
  pc = ppo_config(config, **ppo_over)
  tok, retriever, rc = engine_args
  steps, n_samples = c.steps, (c.group_size if pc.advantage == "grpo" else 1)
  rows = c.questions_per_step * n_samples
  if rows % c.mini_batch or c.mini_batch % pc.micro_batches:
    fail(f"ppo: questions_per_step × group size ({rows}) must divide into mini_batch "
         f"({c.mini_batch}), and mini_batch into micro_batches ({pc.micro_batches})")
  tx_a, tx_c = optimizers(c, 1 if mode == "gkd" else updates_per_step(c, pc.advantage))
  critic = make_critic(student, mesh, rules, config.seed, c.critic_head_init) if (
      mode == "ppo" and pc.use_critic) else None
  if mode == "gkd":
    txs, param_sh = {"policy": tx_a}, {"policy": student.shardings}
    init = lambda a: {"policy": {"params": _fresh(a), "opt_state": tx_a.init(a)},
                      "step": jnp.zeros((), jnp.int32)}
    args = (student.params,)
  else:
    txs = {"actor": tx_a, "critic": tx_c}
    param_sh = {"actor": student.shardings}
    if critic is not None:
      param_sh["critic"] = critic.shardings
    init = lambda a, cr=None: ppo.init_state(_fresh(a), cr, tx_a, tx_c)
    args = (student.params,) + ((critic.params,) if critic is not None else ())
  shape = jax.eval_shape(init, *args)
  state_sh = state_shardings(shape, txs, param_sh, mesh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), keep=config.train.keep_ckpts)
  restored = ckpt.restore(abstract_like(shape, state_sh))
  if restored is not None:
    start, state, _ = restored
    log(f"[{name}] resumed from step {start}")
  else:
    start, state = 0, jax.jit(init, out_shardings=state_sh)(*args)
  if start >= steps:
    ckpt.close()
    key = "policy" if mode == "gkd" else "actor"
    return state[key]["params"], {}

  bsh = lambda nd: sharding.batch_sharding(mesh, nd, rules)
  if mode == "gkd":
    loss_fn = distill.make_loss(student.graphdef, other.graphdef, "jsd",
                                alpha=config.kd.jsd_beta, impl=pc.impl, chunk=pc.chunk,
                                block=pc.block)
    upd = lm.make_update(student.graphdef, tx_a, {**state_sh["policy"], "step": state_sh["step"]},
                         {k: bsh(2) for k in ("tokens", "mask", "loss_mask")}, loss_fn,
                         other.shardings)
  else:
    experience = ppo.make_experience(student.graphdef, critic.graphdef if critic else None,
                                     other.graphdef, pc, num_groups=c.questions_per_step)
    update = ppo.make_update(student.graphdef, critic.graphdef if critic else None, tx_a,
                             tx_c, pc)
  policy_key = "policy" if mode == "gkd" else "actor"
  engine = RolloutEngine(None, tok, retriever, rc)
  # measured on a sample of the questions; the margin covers longer ones
  engine.sampler = engine.sampler_for(student.graphdef, state[policy_key]["params"],
                                      [q["question"] for q in train_q[:256]], margin=32)
  sp = (SamplingParams(greedy=True) if c.temperature == 0 else
        SamplingParams(temperature=c.temperature, top_p=c.top_p))
  metrics_w = MetricsWriter(workdir, name=f"metrics_{name}", enabled=jax.process_index() == 0)
  prog = Progress(name, steps, start=start)
  rng = jax.random.key(config.seed + 101)
  last, bad = {}, 0
  for step in range(start, steps):
    t0 = time.time()
    idx = lm_data.batch_indices(len(train_q), c.questions_per_step, step, config.seed + 11)
    qs = [train_q[i] for i in idx for _ in range(n_samples)]
    engine.sampler.params = distributed.host_local(state[policy_key]["params"])
    trajs = engine.run_sharded([q["question"] for q in qs], jax.random.fold_in(rng, step), sp)
    longest = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
    # Widths of 2^k or 1.5·2^k (≤ 1/3 padding): each new width compiles the experience
    # pass and the update again, a few seconds each on CPU.
    arr = B.from_trajectories(trajs, [q["golden_answers"] for q in qs], tok.pad_id,
                              width=fine_bucket(longest + 1, minimum=64))
    arr["group"] = np.repeat(np.arange(c.questions_per_step), n_samples).astype(np.int32)
    m = B.rollout_metrics(trajs, arr["score"])
    m["rows"] = float(len(trajs))  # behind `em`: the interval of the first/last change
    t_roll = time.time() - t0
    dev = {k: sharding.global_array(v, bsh(np.ndim(v))) for k, v in arr.items()}
    if mode == "gkd":
      batch = {"tokens": dev["tokens"], "mask": dev["mask"], "loss_mask": dev["gen"]}
      state_l = {"params": state["policy"]["params"], "opt_state": state["policy"]["opt_state"],
                 "step": state["step"]}
      state_l, um = upd(state_l, batch, rng, other.params)
      state = {"policy": {"params": state_l["params"], "opt_state": state_l["opt_state"]},
               "step": state_l["step"]}
      m.update({k: float(v) for k, v in jax.device_get(um).items()})
      bad = bad + 1 if m["skipped"] >= 1 else 0
    else:
      critic_p = state["critic"]["params"] if "critic" in state else None
      exp, em = experience(state["actor"]["params"], critic_p, other.params, dev)
      em = {k: float(v) for k, v in jax.device_get(em).items()}
      m.update(em)
      if em["adv_finite"] < 1:
        bad += 1
        log(f"[{name}] step {step + 1}: non-finite advantages; update skipped ({bad} in a row)")
      else:
        full = {**{k: dev[k] for k in ("tokens", "mask")}, **exp}
        perm_rng = np.random.default_rng([config.seed, step])
        ums = []
        for _ in range(c.epochs):
          perm = perm_rng.permutation(rows)
          for s in range(0, rows, c.mini_batch):
            sel = perm[s:s + c.mini_batch]
            mb = jax.tree.map(lambda x: x[sel], full)
            state, um = update(state, mb, rng)
            ums.append(um)
        um = {k: float(np.mean([float(u[k]) for u in ums])) for k in ums[0]}
        m.update(um)
        bad = bad + 1 if um["skipped"] >= 1 else 0
    if bad >= c.max_bad_steps:
      ckpt.close()
      fail(f"[{name}] {bad} consecutive steps with non-finite losses or advantages (step "
           f"{step + 1}); stopped. Last good checkpoint: step {ckpt.latest_step()}")
    dt = time.time() - t0
    m.update(step_time_s=dt, rollout_time_s=t_roll,
             tokens_per_s=float(arr["mask"].sum()) / max(dt, 1e-9))
    if evaluate is not None and c.val_every and ((step + 1) % c.val_every == 0
                                                 or step + 1 == steps):
      m.update({f"val_{k}": v for k, v in evaluate(state[policy_key]["params"]).items()
                if isinstance(v, float)})
    metrics_w.write(step + 1, **m)
    last = m
    prog.count = step + 1
    prog.update(0, extra=f"em {m['em']:.3f} kl {m.get('kl', 0):.4f} "
                         f"searches {m['searches_per_question']:.2f}",
                force=(step + 1) % config.train.log_every == 0)
    stop = preemption.requested()  # collective: every process stops after the same step
    # A skipped step is never saved: the newest checkpoint stays the last good one.
    if ((step + 1) % config.train.ckpt_every == 0 or step + 1 == steps or stop) and not bad:
      ckpt.save(step + 1, state, {"step": step + 1, "seed": config.seed})
    if stop:
      preemption.stop_at_checkpoint(name, ckpt)
  ckpt.close()
  return state[policy_key]["params"], last
