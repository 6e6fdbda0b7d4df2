"""The algorithm pieces that methods and ablations swap, each a small pure function chosen
by a config string: KL estimators, reward shapers, advantage estimators, policy and value
losses. Shapes: `_bt` = [batch, time] over the response (time t predicts token t).
"""

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------- KL estimators (per token)
# Inputs are per-token statistics from `fused_kl.token_stats` (policy = student θ, other =
# the teacher in DGPO, the reference model in PPO); estimates of KL(π_θ ‖ π_other).


def kl_k1(logp, logp_other, full_kl):
  """The reference code's estimator: log π_θ(y) − log π_other(y) on the sampled token."""
  del full_kl
  return logp - logp_other


def kl_k3(logp, logp_other, full_kl):
  """Schulman's low-variance, non-negative estimator: r − 1 − log r, r = π_other/π_θ."""
  del full_kl
  log_r = logp_other - logp
  return jnp.exp(log_r) - 1.0 - log_r


def kl_full(logp, logp_other, full_kl):
  """Exact per-token KL(π_θ ‖ π_other) over the vocabulary (from the fused kernel)."""
  del logp, logp_other
  return full_kl


def kl_low_var(logp, logp_other, full_kl):
  """veRL's `low_var_kl`: k3 clamped to [−10, 10] (the clamp bounds a rare huge ratio)."""
  return jnp.clip(kl_k3(logp, logp_other, full_kl), -10.0, 10.0)


def kl_rk1(logp, logp_other, full_kl):
  """veRL's `rkl`: log π_other(y) − log π_θ(y), the sampled estimate of the reverse KL."""
  return kl_k1(logp_other, logp, full_kl)


def kl_low_var_rkl(logp, logp_other, full_kl):
  """veRL's `low_var_rkl`: k3 with the two policies swapped (r = π_θ/π_other), clamped to
  [−10, 10]."""
  return kl_low_var(logp_other, logp, full_kl)


# Keys: ours (k1, k3, full) and the reference's names for the rest.
KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3, "full": kl_full, "low_var_kl": kl_low_var,
                 "rkl": kl_rk1, "low_var_rkl": kl_low_var_rkl}

# ---------------------------------------------------------------- reward shapers


def token_rewards(score_b, last_bt, kl_bt, gen_bt, beta, rows):
  """Token rewards [B, T]: the score on the last response token, −β·KL on generated tokens
  of the selected rows.

  Args:
    score_b: outcome score per row (EM: 1.0 or 0.0).
    last_bt: 1.0 on each row's last response token.
    kl_bt: per-token KL estimate; gen_bt: 1.0 on model-generated tokens (info mask).
    beta: KL coefficient.
    rows: "wrong" (DGPO's selective KL: rows with score < 0.1, as the reference), "all"
      (uniform KL; also the classic reference-model penalty of PPO), or "none".
  """
  if rows == "none":
    pen = jnp.zeros_like(kl_bt)
  elif rows == "wrong":
    pen = kl_bt * gen_bt * (score_b < 0.1)[:, None]
  elif rows == "all":
    pen = kl_bt * gen_bt
  else:
    raise ValueError(f"reward KL rows={rows!r}: expected wrong, all or none")
  return score_b[:, None] * last_bt - beta * pen


# ---------------------------------------------------------------- advantage estimators


def gae(rewards_bt, values_bt, mask_bt, gamma=1.0, lam=1.0):
  """GAE over the generated tokens: positions with mask 0 (observations, padding) are
  transparent (they pass the running sums through), so observation tokens neither receive
  advantages nor break the credit path. Returns (advantages, returns) [B, T]."""
  def step(carry, xs):
    next_v, acc = carry
    r, v, m = xs
    delta = r + gamma * next_v - v
    acc_new = delta + gamma * lam * acc
    adv = jnp.where(m > 0, acc_new, 0.0)
    carry = (jnp.where(m > 0, v, next_v), jnp.where(m > 0, acc_new, acc))
    return carry, adv

  b = rewards_bt.shape[0]
  xs = tuple(jnp.flip(x, 1).T for x in (rewards_bt, values_bt, mask_bt))
  _, adv = jax.lax.scan(step, (jnp.zeros(b), jnp.zeros(b)), xs)
  adv = jnp.flip(adv.T, 1)
  return adv, (adv + values_bt) * mask_bt


def grpo_advantages(score_b, group_b, mask_bt, num_groups, eps=1e-6, unbiased=True):
  """GRPO: each row's outcome score normalized within its group (same question), broadcast
  to its generated tokens. group_b: int group id per row in [0, num_groups).

  unbiased: the group's std with Bessel's correction (n − 1), as the reference
  (`torch.std`); False divides by n. A group of one row keeps its score (mean 0, std 1, as
  the reference), since its std is undefined.
  """
  ones = jnp.ones_like(score_b)
  n = jax.ops.segment_sum(ones, group_b, num_groups)
  mean = jax.ops.segment_sum(score_b, group_b, num_groups) / jnp.maximum(n, 1)
  ss = jax.ops.segment_sum((score_b - mean[group_b]) ** 2, group_b, num_groups)
  var = ss / jnp.maximum(n - 1 if unbiased else n, 1)
  single = n[group_b] < 2
  adv = jnp.where(single, score_b / (1.0 + eps),
                  (score_b - mean[group_b]) / (jnp.sqrt(var[group_b]) + eps))
  return adv[:, None] * mask_bt


def whiten(x_bt, mask_bt, eps=1e-8, unbiased=False):
  """Masked whitening (mean 0, std 1 over masked positions); zero outside the mask.
  unbiased: the variance with Bessel's correction, as veRL's `masked_whiten`."""
  n = jnp.maximum(mask_bt.sum(), 1.0)
  mean = (x_bt * mask_bt).sum() / n
  var = (((x_bt - mean) * mask_bt) ** 2).sum() / (jnp.maximum(n - 1.0, 1.0) if unbiased else n)
  return (x_bt - mean) * jax.lax.rsqrt(var + eps) * mask_bt


def response_masks(gen_bt, input_valid_bt, target_valid_bt):
  """(targets, inputs) masks [B, T] of a row's response: every position from its first
  generated target on (observation tokens included), by target validity and by input
  validity. The second also holds the terminal position (input = the row's last token),
  where the reference's critic is trained towards a return of 0."""
  t = jnp.arange(gen_bt.shape[1])[None, :]
  first = jnp.argmax(gen_bt > 0, axis=1)[:, None]
  after = (t >= first).astype(jnp.float32)
  return after * target_valid_bt, after * input_valid_bt


# ---------------------------------------------------------------- losses


def masked_mean(x, mask):
  return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def policy_loss(logp_bt, old_logp_bt, adv_bt, mask_bt, clip=0.2):
  """PPO clipped surrogate (token-mean over generated tokens) and its diagnostics."""
  ratio = jnp.exp(logp_bt - old_logp_bt)
  pg1 = -adv_bt * ratio
  pg2 = -adv_bt * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
  loss = masked_mean(jnp.maximum(pg1, pg2), mask_bt)
  clipfrac = masked_mean((pg2 > pg1).astype(jnp.float32), mask_bt)
  approx_kl = masked_mean(0.5 * (logp_bt - old_logp_bt) ** 2, mask_bt)
  return loss, {"clip_frac": clipfrac, "approx_kl": approx_kl}


def value_loss(values_bt, old_values_bt, returns_bt, mask_bt, clip=0.5):
  """Clipped value loss (0.5 × max of the two squared errors), token-mean."""
  v_clipped = old_values_bt + jnp.clip(values_bt - old_values_bt, -clip, clip)
  l1, l2 = (values_bt - returns_bt) ** 2, (v_clipped - returns_bt) ** 2
  loss = 0.5 * masked_mean(jnp.maximum(l1, l2), mask_bt)
  return loss, {"vf_clip_frac": masked_mean((l2 > l1).astype(jnp.float32), mask_bt)}


def explained_variance(values_bt, returns_bt, mask_bt):
  var_r = masked_mean((returns_bt - masked_mean(returns_bt, mask_bt)) ** 2, mask_bt)
  err = returns_bt - values_bt
  var_e = masked_mean((err - masked_mean(err, mask_bt)) ** 2, mask_bt)
  return 1.0 - var_e / jnp.maximum(var_r, 1e-8)
