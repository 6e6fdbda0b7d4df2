"""Next-token LM training: the train state, the optimizer, and one pure update function.

`update(state, batch, rng) -> (state, metrics)` is jitted once with explicit in/out
shardings and the state donated. The state is a plain dict pytree:
`{"params": <pure param dict>, "opt_state": <optax state>, "step": int32[]}`.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P


SCHEDULES = ("cosine", "constant")


def lr_schedule(lr: float, steps: int, warmup_steps: int = 0, kind: str = "cosine",
                updates_per_step: int = 1) -> optax.Schedule:
  """The learning rate as a function of the optimizer's update count.

  kind "cosine": linear warmup from 0, then cosine decay to 10% at `steps`. kind "constant":
  rate · min(1, s / max(1, warmup)) at step s, the reference's PPO schedule (its
  `get_constant_schedule_with_warmup`; step 0 has rate 0 even without warmup). With
  `updates_per_step` > 1 (PPO: mini-batches × epochs per RL step) the schedule advances once
  per RL step, as the reference steps its schedulers, not once per update.
  """
  if kind == "constant":
    sched = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
  elif kind == "cosine":
    warmup_steps = max(warmup_steps, 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps,
                                               max(steps, warmup_steps + 1), end_value=0.1 * lr)
  else:
    raise ValueError(f"lr schedule {kind!r} is not one of {SCHEDULES}")
  if updates_per_step <= 1:
    return sched
  return lambda count: sched(count // updates_per_step)


def make_optimizer(lr: float, steps: int, warmup_steps: int = 0, weight_decay: float = 0.0,
                   grad_clip: float = 1.0, b2: float = 0.95, schedule: str = "cosine",
                   updates_per_step: int = 1) -> optax.GradientTransformation:
  """AdamW (β1 0.9) on `lr_schedule(...)`, after global-norm clipping."""
  sched = lr_schedule(lr, steps, warmup_steps, schedule, updates_per_step)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adamw(sched, b1=0.9, b2=b2, weight_decay=weight_decay))


def token_nll(logits_btv, targets_bt):
  """Per-token negative log-likelihood [B, T] (float32)."""
  logz = jax.nn.logsumexp(logits_btv, axis=-1)
  tgt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
  return logz - tgt


def select_loss_positions(batch, h_btd, targets_bt, w_bt):
  """With `batch["loss_idx"]` (int32 [B, K], padded with -1; `data.lm_data.loss_positions`):
  the hidden states [B, K, D], targets and weights [B, K] at those positions only, so the
  LM head and the losses after it skip the positions that do not count. Without it, the
  inputs unchanged."""
  if "loss_idx" not in batch:
    return h_btd, targets_bt, w_bt
  idx = batch["loss_idx"]
  safe = jnp.maximum(idx, 0)
  h = jnp.take_along_axis(h_btd, safe[..., None], axis=1)
  w = jnp.take_along_axis(w_bt, safe, axis=1) * (idx >= 0)
  return h, jnp.take_along_axis(targets_bt, safe, axis=1), w


def lm_loss(graphdef, params, batch, frozen=None):
  """Mean next-token NLL over positions whose target mask is 1.

  batch: {"tokens": int32 [B, T+1], "mask": [B, T+1] (real tokens), optional
  "loss_mask": [B, T+1] (which targets count: e.g. model-generated tokens only in SFT),
  optional "loss_idx": [B, K] (those positions listed, to run the LM head on them only)}.
  """
  del frozen
  model = nnx.merge(graphdef, params)
  inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
  h, _ = model.hidden(inputs, valid_bt=batch["mask"][:, :-1])
  w = batch.get("loss_mask", batch["mask"])[:, 1:].astype(jnp.float32)
  h, targets, w = select_loss_positions(batch, h, targets, w)
  logits = model.logits(h)
  nll = token_nll(logits, targets)
  n = jnp.maximum(w.sum(), 1.0)
  return (nll * w).sum() / n, {"tokens": w.sum()}


def init_state(params, tx: optax.GradientTransformation) -> dict:
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def state_shardings(tx: optax.GradientTransformation, state_shape: dict,
                    param_shardings: dict, mesh) -> dict:
  """Shardings for the whole train state: optimizer moments follow their params, the
  optimizer's scalars (counts) and the step are replicated."""
  rep = NamedSharding(mesh, P())
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, state_shape["opt_state"], param_shardings,
                                 transform_non_params=lambda _: rep)
  return {"params": param_shardings, "opt_state": opt_sh, "step": rep}


def keep_if_finite(new_state, old_state, probe):
  """(state, skipped): the new state when `probe` (e.g. loss + grad norm) is finite, else the
  old one with only the step advanced, so a NaN/Inf batch is skipped instead of poisoning
  the params."""
  ok = jnp.isfinite(probe)
  kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, old_state)
  kept["step"] = new_state["step"]
  return kept, 1.0 - ok.astype(jnp.float32)


def make_update(graphdef, tx, state_sh, batch_sh, loss_fn: Callable = lm_loss,
                frozen_sh=None):
  """The jitted update `(state, batch, rng, frozen) -> (state, metrics)`.

  `loss_fn(graphdef, params, batch, frozen) -> (loss, aux)`; `frozen` carries params that
  are read but not trained (the teacher in distillation), passed in with `frozen_sh`
  shardings, never differentiated nor donated.
  """

  def update(state, batch, rng, frozen=None):
    del rng  # deterministic objective; kept for the common update signature
    (loss, aux), grads = jax.value_and_grad(
        lambda p: loss_fn(graphdef, p, batch, frozen), has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    gnorm = optax.tree.norm(grads)
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    new, skipped = keep_if_finite(new, state, loss + gnorm)
    metrics = {"loss": loss, "grad_norm": gnorm, "param_norm": optax.tree.norm(new["params"]),
               "skipped": skipped, **aux}
    return new, metrics

  jitted = jax.jit(update, in_shardings=(state_sh, batch_sh, None, frozen_sh),
                   out_shardings=(state_sh, None), donate_argnums=(0,))

  def call(state, batch, rng, frozen=None):
    return jitted(state, batch, rng, frozen)

  call.lower = jitted.lower
  return call
