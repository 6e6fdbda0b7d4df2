"""PPO with a critic (and GRPO without one) over agentic trajectories: the experience pass
and one pure, jitted update.

Batch layout (host → device), with T+1 token columns per row (prompt then response):
  tokens int32 [B, T+1], mask [B, T+1] (real tokens), gen [B, T+1] (1 on model-generated
  tokens), last [B, T+1] (1 on each row's last generated token), score [B] (EM), group [B]
  (question id within the batch, for GRPO). Per-token arrays the experience pass adds are
  [B, T], aligned with the targets tokens[:, 1:].

`experience(actor, critic, other, batch)` recomputes the actor's log-probs (the ratio's
denominator is the trainer's, not the sampler's), the critic's values and the per-token KL
to `other` (the teacher in DGPO, the reference model in PPO), then rewards and advantages.
`update(state, batch, rng)` does one mini-batch step with gradient accumulation over
micro-batches; the state is donated and only actor and critic are differentiated.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dgpo_jax.rl import algos, fused_kl
from dgpo_jax.rl.distill import hidden_and_head
from dgpo_jax.train.lm import keep_if_finite


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  clip: float = 0.2
  vf_clip: float = 0.5
  ent_coef: float = 0.001
  vf_coef: float = 1.0
  gamma: float = 1.0
  lam: float = 1.0
  beta: float = 0.001
  kl_estimator: str = "k1"  # algos.KL_ESTIMATORS: k1 | k3 | full | low_var_kl | rkl | low_var_rkl
  kl_rows: str = "wrong"  # wrong (selective, DGPO) | all (uniform / PPO's ref KL) | none
  advantage: str = "gae"  # gae (critic) | grpo (group-normalized, no critic)
  grpo_std: str = "unbiased"  # GRPO's group std: unbiased (n − 1, the reference) | population
  # Where the critic learns and advantages are whitened: "generated" tokens only, or the whole
  # "response" (observations and the terminal position too, GAE unmasked, whitening with the
  # unbiased variance: the reference's `compute_gae_advantage_return` and `dp_critic`). The
  # policy loss and the KL reward use generated tokens either way.
  critic_positions: str = "generated"
  # KL as a loss (the reference's `use_kl_loss`, how Search-R1's GRPO applies its KL): > 0 adds
  # kl_loss_coef × the token-mean KL estimate (`kl_loss_estimator`, from the current policy's
  # log-probs, so it is differentiated) to the actor loss, and the reward carries no KL.
  kl_loss_coef: float = 0.0
  kl_loss_estimator: str = "low_var_kl"
  whiten: bool = True
  micro_batches: int = 1
  impl: str = "jnp"  # fused_kl implementation
  chunk: int = 8192
  block: int = 1024

  def __post_init__(self):
    if self.kl_estimator not in algos.KL_ESTIMATORS:
      raise ValueError(f"ppo.kl_estimator={self.kl_estimator!r}: expected one of "
                       f"{sorted(algos.KL_ESTIMATORS)}")
    if self.kl_rows not in ("wrong", "all", "none"):
      raise ValueError(f"ppo.kl_rows={self.kl_rows!r}: expected wrong, all or none")
    if self.advantage not in ("gae", "grpo"):
      raise ValueError(f"ppo.advantage={self.advantage!r}: expected gae or grpo")
    if self.grpo_std not in ("unbiased", "population"):
      raise ValueError(f"ppo.grpo_std={self.grpo_std!r}: expected unbiased or population")
    if self.kl_loss_estimator not in algos.KL_ESTIMATORS or self.kl_loss_estimator == "full":
      raise ValueError(f"ppo.kl_loss_estimator={self.kl_loss_estimator!r}: expected one of "
                       f"{sorted(set(algos.KL_ESTIMATORS) - {'full'})} (a sampled-token "
                       f"estimator: the update has no reference hidden states)")
    if self.critic_positions not in ("generated", "response"):
      raise ValueError(f"ppo.critic_positions={self.critic_positions!r}: expected generated or "
                       f"response")

  @property
  def use_critic(self) -> bool:
    return self.advantage == "gae"


def values_of(critic_graphdef, critic_params, inputs_bt, valid_bt):
  return nnx.merge(critic_graphdef, critic_params)(inputs_bt, valid_bt=valid_bt)


def _stats(actor_gd, actor_p, other_gd, other_p, inputs, targets, valid, cfg):
  hs, ws = hidden_and_head(actor_gd, actor_p, inputs, valid)
  b, t = inputs.shape
  ht, wt = None, None  # no other model: the policy's own statistics, its KL to itself is 0
  if other_gd is not None:
    ht, wt = hidden_and_head(other_gd, jax.lax.stop_gradient(other_p), inputs, valid)
    ht = ht.reshape(b * t, -1)
  st = fused_kl.token_stats(hs.reshape(b * t, -1), ws, ht, wt, targets.reshape(-1),
                            impl=cfg.impl, chunk=cfg.chunk, block=cfg.block)
  st = {k: v.reshape(b, t) for k, v in st.items()}
  if other_gd is None:
    st.update(logp_t=jax.lax.stop_gradient(st["logp_s"]), kl_st=jnp.zeros_like(st["logp_s"]))
  return st


def make_experience(actor_gd, critic_gd, other_gd, cfg: PPOConfig, num_groups: int = 1,
                    in_shardings=None):
  """The jitted experience pass `(actor, critic, other, batch) -> dict of [B, T] arrays`,
  with `in_shardings` for its four arguments when given."""

  def experience(actor_p, critic_p, other_p, batch):
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    valid = batch["mask"][:, :-1]
    gen = batch["gen"][:, 1:].astype(jnp.float32)
    last = batch["last"][:, 1:].astype(jnp.float32)
    st = _stats(actor_gd, actor_p, other_gd, other_p, inputs, targets, valid, cfg)
    kl = algos.KL_ESTIMATORS[cfg.kl_estimator](st["logp_s"], st["logp_t"], st["kl_st"])
    rows = "none" if cfg.kl_loss_coef > 0 else cfg.kl_rows  # with a KL loss, none in the reward
    rewards = algos.token_rewards(batch["score"], last, kl, gen, cfg.beta, rows)
    vmask = gen
    if cfg.use_critic and cfg.critic_positions == "response":
      resp, vmask = algos.response_masks(gen, valid.astype(jnp.float32),
                                         batch["mask"][:, 1:].astype(jnp.float32))
      values = values_of(critic_gd, critic_p, inputs, valid) * vmask
      adv, returns = algos.gae(rewards, values, jnp.ones_like(gen), cfg.gamma, cfg.lam)
      returns = returns * vmask
      adv = algos.whiten(adv, resp, unbiased=True) if cfg.whiten else adv * resp
    elif cfg.use_critic:
      values = values_of(critic_gd, critic_p, inputs, valid) * gen
      adv, returns = algos.gae(rewards, values, gen, cfg.gamma, cfg.lam)
      if cfg.whiten:
        adv = algos.whiten(adv, gen)
    else:
      values = jnp.zeros_like(gen)
      adv = algos.grpo_advantages(batch["score"], batch["group"], gen, num_groups,
                                  unbiased=cfg.grpo_std == "unbiased")
      # No value baseline for the KL part: it enters as a per-token penalty-to-go.
      pen = (rewards - batch["score"][:, None] * last) * gen
      adv = adv + jnp.flip(jnp.cumsum(jnp.flip(pen, 1), 1), 1) * gen
      returns = jnp.zeros_like(gen)
    finite = jnp.isfinite(adv).all() & jnp.isfinite(returns).all()
    out = {"old_logp": st["logp_s"] * gen, "adv": jnp.where(finite, adv, 0.0),
           "returns": jnp.where(finite, returns, 0.0), "old_values": values, "gen": gen,
           "vmask": vmask}
    if cfg.kl_loss_coef > 0:
      out["ref_logp"] = st["logp_t"] * gen
    metrics = {"kl": algos.masked_mean(kl, gen),
               "kl_full": algos.masked_mean(st["kl_st"], gen),
               "entropy": algos.masked_mean(st["ent_s"], gen),
               "token_reward_sum": (rewards * gen).sum() / rewards.shape[0],
               "adv_finite": finite.astype(jnp.float32)}
    return out, metrics

  return jax.jit(experience, in_shardings=in_shardings)


def init_state(actor_params, critic_params, tx_actor, tx_critic):
  state = {"actor": {"params": actor_params, "opt_state": tx_actor.init(actor_params)},
           "step": jnp.zeros((), jnp.int32)}
  if critic_params is not None:
    state["critic"] = {"params": critic_params, "opt_state": tx_critic.init(critic_params)}
  return state


def make_update(actor_gd, critic_gd, tx_actor, tx_critic, cfg: PPOConfig, state_sh=None,
                batch_sh=None):
  """The jitted PPO mini-batch update `(state, batch, rng) -> (state, metrics)`.

  batch: tokens, mask (as for `experience`), old_logp, adv, returns, old_values, gen,
  (optional, else gen) vmask and, with `kl_loss_coef` > 0, ref_logp [B, T].
  B must divide into `cfg.micro_batches` (gradients are accumulated over them).
  """
  use_critic = cfg.use_critic

  def losses(actor_p, critic_p, mb):
    inputs, targets = mb["tokens"][:, :-1], mb["tokens"][:, 1:]
    valid, gen = mb["mask"][:, :-1], mb["gen"]
    st = _stats(actor_gd, actor_p, None, None, inputs, targets, valid, cfg)
    pg, pm = algos.policy_loss(st["logp_s"], mb["old_logp"], mb["adv"], gen, cfg.clip)
    ent = algos.masked_mean(st["ent_s"], gen)
    actor_loss = pg - cfg.ent_coef * ent
    m = {"pg_loss": pg, "entropy": ent, **pm}
    if cfg.kl_loss_coef > 0:
      kld = algos.KL_ESTIMATORS[cfg.kl_loss_estimator](st["logp_s"], mb["ref_logp"], None)
      m["kl_loss"] = algos.masked_mean(kld, gen)
      actor_loss = actor_loss + cfg.kl_loss_coef * m["kl_loss"]
    if use_critic:
      values = values_of(critic_gd, critic_p, inputs, valid)
      vmask = mb.get("vmask", gen)  # the positions the critic learns (cfg.critic_positions)
      vl, vm = algos.value_loss(values, mb["old_values"], mb["returns"], vmask, cfg.vf_clip)
      m.update(vf_loss=vl, explained_var=algos.explained_variance(values, mb["returns"], vmask),
               **vm)
      return actor_loss + cfg.vf_coef * vl, m
    return actor_loss, m

  def update(state, batch, rng):
    del rng
    n = cfg.micro_batches
    micro = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
    critic_p = state["critic"]["params"] if use_critic else None
    grad_fn = jax.value_and_grad(losses, argnums=(0, 1) if use_critic else 0, has_aux=True)

    def acc(carry, mb):
      (loss, m), g = grad_fn(state["actor"]["params"], critic_p, mb)
      return jax.tree.map(jnp.add, carry, (g, m, loss)), None

    zero = jax.eval_shape(lambda: grad_fn(state["actor"]["params"], critic_p,
                                          jax.tree.map(lambda x: x[0], micro)))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zero[1], zero[0][1], zero[0][0]))
    (grads, m, loss), _ = jax.lax.scan(acc, zero, micro)
    grads, m, loss = jax.tree.map(lambda x: x / n, (grads, m, loss))
    g_actor, g_critic = grads if use_critic else (grads, None)
    new = {"step": state["step"] + 1}
    up, opt = tx_actor.update(g_actor, state["actor"]["opt_state"], state["actor"]["params"])
    new["actor"] = {"params": optax.apply_updates(state["actor"]["params"], up),
                    "opt_state": opt}
    m["actor_grad_norm"] = optax.tree.norm(g_actor)
    probe = loss + m["actor_grad_norm"]
    if use_critic:
      up, opt = tx_critic.update(g_critic, state["critic"]["opt_state"],
                                 state["critic"]["params"])
      new["critic"] = {"params": optax.apply_updates(state["critic"]["params"], up),
                       "opt_state": opt}
      m["critic_grad_norm"] = optax.tree.norm(g_critic)
      probe = probe + m["critic_grad_norm"]
    new, skipped = keep_if_finite(new, state, probe)
    m["skipped"] = skipped
    m["loss"] = loss
    return new, m

  return jax.jit(update, in_shardings=(state_sh, batch_sh, None) if state_sh else None,
                 out_shardings=(state_sh, None) if state_sh else None, donate_argnums=(0,))
