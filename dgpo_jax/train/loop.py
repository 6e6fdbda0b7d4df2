"""A resumable host training loop around one jitted update, shared by the LM-style stages
(pretraining, SFT, later KD): checkpoints every N steps, progress and metrics JSONL, and the
batch for step s drawn by a pure function of s (so a resumed run sees the same data)."""

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np

from dgpo_jax.parallel import sharding
from dgpo_jax.train import lm
from dgpo_jax.utils.checkpoint import Checkpointer, abstract_like
from dgpo_jax.utils import preemption
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import MetricsWriter, Progress


@dataclasses.dataclass
class FitConfig:
  steps: int
  lr: float
  warmup_steps: int = 0
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  log_every: int = 10
  ckpt_every: int = 100
  keep_ckpts: int = 2
  schedule_steps: int = 0  # length of the LR schedule (0 = steps); lets a run grow by epochs
  max_bad_steps: int = 3  # consecutive non-finite steps (each skipped) before stopping

  @classmethod
  def from_config(cls, c) -> "FitConfig":
    return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls) if f.name in c})


def fit(name: str, workdir: str, graphdef, params, param_shardings, mesh,
        batch_fn: Callable[[int], dict], fc: FitConfig, seed: int = 0, log=print,
        loss_fn: Callable = lm.lm_loss, frozen=None, frozen_sh=None):
  """Trains `params` for fc.steps with `batch_fn(step) -> {"tokens", "mask"[, "loss_mask"]}`.

  Resumes from `workdir/checkpoints/<name>` when a checkpoint exists. `loss_fn` and
  `frozen` (untrained params it reads, e.g. a teacher) go to `lm.make_update`. A step whose
  loss or gradient is not finite is skipped (params unchanged) and logged; `max_bad_steps`
  in a row stop the run with the last good checkpoint intact. Returns
  (params, last logged metrics).
  """
  tx = lm.make_optimizer(fc.lr, fc.schedule_steps or fc.steps, fc.warmup_steps,
                         fc.weight_decay, fc.grad_clip)
  shape = jax.eval_shape(lambda p: lm.init_state(p, tx), params)
  state_sh = lm.state_shardings(tx, shape, param_shardings, mesh)
  example = batch_fn(0)
  batch_sh = {k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in example.items()}
  update = lm.make_update(graphdef, tx, state_sh, batch_sh, loss_fn, frozen_sh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), keep=fc.keep_ckpts)
  restored = ckpt.restore(abstract_like(shape, state_sh))
  if restored is not None:
    start, state, meta = restored
    log(f"[{name}] resumed from step {start}")
  else:
    start = 0
    state = jax.jit(lambda p: lm.init_state(p, tx), out_shardings=state_sh)(params)
  metrics = MetricsWriter(workdir, name=f"metrics_{name}", enabled=jax.process_index() == 0)
  prog = Progress(name, fc.steps, start=start)
  last, t_last, tokens, bad = {}, time.time(), 0, 0
  rng = jax.random.key(seed)
  for step in range(start, fc.steps):
    host = batch_fn(step)
    batch = {k: sharding.global_array(v, batch_sh[k]) for k, v in host.items()}
    state, m = update(state, batch, jax.random.fold_in(rng, step), frozen)
    tokens += int(host["tokens"].size)
    prog.count = step + 1
    stop = preemption.requested()  # collective: every process stops after the same step
    if float(m["skipped"]):
      bad += 1
      log(f"[{name}] step {step + 1}: non-finite loss or gradient; step skipped "
          f"({bad} in a row)")
    else:
      bad = 0
    if bad and (step + 1) % fc.log_every and step + 1 != fc.steps:  # else the log row says it
      metrics.write(step + 1, skipped=1.0)
    elif ((step + 1) % fc.log_every == 0 or step + 1 == fc.steps or bad >= fc.max_bad_steps
          or stop):
      last = {k: float(v) for k, v in jax.device_get(m).items()}
      now = time.time()
      last["tokens_per_s"] = tokens / max(now - t_last, 1e-9)
      t_last, tokens = now, 0
      metrics.write(step + 1, **last)
      prog.update(0, extra=f"loss {last['loss']:.4f}", force=True)
    if bad >= fc.max_bad_steps:
      ckpt.close()
      fail(f"[{name}] {bad} consecutive non-finite steps (last at step {step + 1}); stopped. "
           f"Last good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}")
    # A skipped step is never saved: the newest checkpoint stays the last good one.
    if ((step + 1) % fc.ckpt_every == 0 or step + 1 == fc.steps or stop) and not bad:
      ckpt.save(step + 1, state, {"data_step": step + 1, "seed": seed})
    if stop:
      preemption.stop_at_checkpoint(name, ckpt)
  ckpt.close()
  return state["params"], last
