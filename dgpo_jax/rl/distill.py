"""Distillation losses on trajectories (DGPO's KD cold start and the KD baselines).

Every loss is a token mean over model-generated tokens only (prompt, `<information>` blocks
and padding are masked), computed from both models' final hidden states and LM heads by the
chunked kernels in `fused_kl`, so no [B, T, V] log-probs are materialized.

Losses (config string `kd.loss`):
  ce_fkl    CE(teacher tokens) + λ·KL(π_t ‖ π_s)  (DGPO stage 1, Hinton KD; λ = 0 is SFT)
  skew_fkl  DistiLLM's skew forward KL, KL(π_t ‖ α π_t + (1−α) π_s)
  taid      TAID: KL(p_t̃ ‖ π_s), p_t̃ ∝ π_s^(1−t) π_t^t (student side detached), t scheduled
  jsd       GKD's generalized JSD(β) (used on the student's own samples)
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dgpo_jax.rl import fused_kl
from dgpo_jax.train.lm import select_loss_positions

LOSSES = ("ce_fkl", "skew_fkl", "taid", "jsd")


def hidden_and_head(graphdef, params, tokens_bt, valid_bt):
  """A decoder's final hidden states [B, T, D] and its LM head [D, V]."""
  model = nnx.merge(graphdef, params)
  h, _ = model.hidden(tokens_bt, valid_bt=valid_bt)
  return h, model.head_weight().astype(h.dtype)


def teacher_states(graphdef, params, tokens_bt, valid_bt, loss_idx_bk):
  """A frozen model's final hidden states at the listed loss positions, [B, K, D] float32
  (rows of loss_idx padded with -1 get row position 0's state; their weight is 0 in every
  loss). KD computes them once per trajectory set instead of once per step (`teacher_h`)."""
  h, _ = hidden_and_head(graphdef, params, tokens_bt, valid_bt)
  return jnp.take_along_axis(h, jnp.maximum(loss_idx_bk, 0)[..., None], axis=1).astype(
      jnp.float32)


def taid_t(step, total, t_start=0.4, t_end=1.0):
  """TAID's interpolation coefficient, rising linearly from t_start to t_end."""
  frac = jnp.clip(step.astype(jnp.float32) / max(total, 1), 0.0, 1.0)
  return t_start + (t_end - t_start) * frac


def make_loss(student_graphdef, teacher_graphdef, loss: str = "ce_fkl", lam: float = 1.0,
              alpha: float = 0.1, total_steps: int = 1, impl: str = "jnp",
              chunk: int = 8192, block: int = 1024):
  """`loss_fn(graphdef, params, batch, frozen) -> (loss, aux)` for `train.lm.make_update`.

  batch: tokens [B, T+1], mask [B, T+1] (real tokens), loss_mask [B, T+1] (1 on generated
  tokens), optionally loss_idx [B, K] (those positions: both heads run on them only) and
  with it teacher_h [B, K, D] (the teacher's hidden states there, `teacher_states`, so the
  teacher's forward is not run again every step), for taid a replicated `step` scalar, and
  optionally lam [B] float32, λ replicated per row, which then stands for `lam`: one compiled
  update serves every λ (SFT's 0 and KD's 1 in one workdir).
  frozen: the teacher's params.
  """
  if loss not in LOSSES:
    raise ValueError(f"kd.loss={loss!r}: expected one of {LOSSES}")

  def loss_fn(graphdef, params, batch, frozen):
    del graphdef
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    valid = batch["mask"][:, :-1]
    w_bt = batch["loss_mask"][:, 1:].astype(jnp.float32)
    hs, ws = hidden_and_head(student_graphdef, params, inputs, valid)
    hs, y, w = select_loss_positions(batch, hs, targets, w_bt)
    ht, wt = _teacher_side(batch, jax.lax.stop_gradient(frozen), inputs, valid, targets, w_bt)
    hs, ht = hs.reshape(-1, hs.shape[-1]), ht.reshape(-1, ht.shape[-1])
    y, w = y.reshape(-1), w.reshape(-1)
    n = jnp.maximum(w.sum(), 1.0)
    st = fused_kl.token_stats(hs, ws, ht, wt, y, impl=impl, chunk=chunk, block=block)
    ce = (-st["logp_s"] * w).sum() / n
    fkl = (st["kl_ts"] * w).sum() / n
    aux = {"ce": ce, "kl_teacher_student": fkl, "tokens": w.sum(),
           "entropy": (st["ent_s"] * w).sum() / n}
    if loss == "ce_fkl":
      return ce + (batch["lam"][0] if "lam" in batch else lam) * fkl, aux
    a = taid_t(batch["step"][0], total_steps) if loss == "taid" else alpha
    div = fused_kl.chunked_divergence(hs, ws, ht, wt, loss, a, chunk=chunk)
    return (div * w).sum() / n, dict(aux, divergence=(div * w).sum() / n)

  def _teacher_side(batch, frozen, inputs, valid, targets, w_bt):
    if "teacher_h" in batch:
      if "loss_idx" not in batch:
        raise ValueError("distill: a batch with teacher_h needs the loss_idx it is indexed by")
      ht = batch["teacher_h"]
      return ht, nnx.merge(teacher_graphdef, frozen).head_weight().astype(ht.dtype)
    ht, wt = hidden_and_head(teacher_graphdef, frozen, inputs, valid)
    return select_loss_positions(batch, ht, targets, w_bt)[0], wt

  return loss_fn
