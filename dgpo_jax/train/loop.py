"""The one resumable host loop every training stage runs through (LM pretraining, SFT, KD,
PPO/DGPO/GRPO and GKD): restore or initialize, step, count skipped steps, write metrics and
progress, checkpoint, stop on a preemption request.

A stage supplies a `step_fn(state, step) -> (state, metrics, bad)`; the batch or rollout of
step s is a pure function of s, so a resumed run sees the same data. `fit` is the LM-style
stages' step function around one jitted update; `pipeline.rl_stage` supplies the on-policy
one.
"""

import dataclasses
import os
import time
from typing import Callable, Optional

import jax
import numpy as np

from dgpo_jax.train import lm
from dgpo_jax.train.step import Model, place, train_update
from dgpo_jax.utils import preemption, progress
from dgpo_jax.utils.checkpoint import Checkpointer, abstract_like
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
  metrics_every_step: bool = False  # a metrics row per step (RL), else every log_every

  @classmethod
  def from_config(cls, c) -> "FitConfig":
    return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls) if f.name in c})


def optimizer(fc: FitConfig):
  """The optimizer a `fit` run trains with (AdamW on a warmup-cosine schedule)."""
  return lm.make_optimizer(fc.lr, fc.schedule_steps or fc.steps, fc.warmup_steps,
                           fc.weight_decay, fc.grad_clip)


def checkpoint_dir(workdir: str, name: str) -> str:
  """Where a `fit` run named `name` keeps its checkpoints."""
  return os.path.join(workdir, "checkpoints", name)


def metrics_name(name: str) -> str:
  """The `MetricsWriter` name of a `fit` or RL run named `name`."""
  return f"metrics_{name}"


def metrics_file(workdir: str, name: str) -> str:
  """The JSONL metrics rows of a `fit` or RL run named `name`."""
  return progress.metrics_path(workdir, metrics_name(name))


def restore_or_init(name: str, workdir: str, shape, state_sh, init: Callable, keep: int, log):
  """(checkpointer, first step, state): the newest checkpoint of `workdir/checkpoints/<name>`
  placed with `state_sh`, or `init()` at step 0."""
  ckpt = Checkpointer(checkpoint_dir(workdir, name), keep=keep)
  restored = ckpt.restore(abstract_like(shape, state_sh))
  if restored is None:
    return ckpt, 0, init()
  start, state, _ = restored
  log(f"[{name}] resumed from step {start}")
  return ckpt, start, state


def run_loop(name: str, workdir: str, ckpt: Checkpointer, state, start: int, fc: FitConfig,
             step_fn: Callable, seed: int = 0, log=print,
             summary: Callable[[dict], str] = lambda m: f"loss {m.get('loss', 0):.4f}"):
  """Runs `step_fn(state, step) -> (state, metrics, bad)` for steps `start`…`fc.steps − 1`.

  `bad` is "" or why the step was skipped (its state unchanged); `fc.max_bad_steps` in a row
  stop the run with the last good checkpoint intact, and a skipped step is never saved.
  Metrics rows (with `tokens_per_s` and `tokens_seen` from the metrics' `tokens_in`) go to
  `metrics_<name>.jsonl` every `fc.log_every` steps (every step with `metrics_every_step`),
  checkpoints every `fc.ckpt_every` and at the end. On a preemption request the step in
  progress finishes, is saved, and the process exits. Returns (state, last metrics row).
  """
  metrics = MetricsWriter(workdir, name=metrics_name(name), enabled=jax.process_index() == 0)
  prog = Progress(name, fc.steps, start=start)
  last, bad, t_last, tokens = {}, 0, time.time(), 0.0
  for step in range(start, fc.steps):
    state, m, why = step_fn(state, step)
    tokens += m.pop("tokens_in", 0.0)
    bad = bad + 1 if why else 0
    if why:
      log(f"[{name}] step {step + 1}: {why}; step skipped ({bad} in a row)")
    prog.count = step + 1
    stop = preemption.requested()  # collective: every process stops after the same step
    end = step + 1 == fc.steps or bad >= fc.max_bad_steps or stop
    if fc.metrics_every_step or (step + 1) % fc.log_every == 0 or end:
      now = time.time()
      # tokens_seen: the tokens of the steps since the last row (their sum is the stage's)
      last = dict(m, tokens_per_s=tokens / max(now - t_last, 1e-9), tokens_seen=tokens)
      t_last, tokens = now, 0.0
      metrics.write(step + 1, **last)
      prog.update(0, extra=summary(last), force=(step + 1) % fc.log_every == 0 or end)
    elif bad:
      metrics.write(step + 1, skipped=1.0)
    if bad >= fc.max_bad_steps:
      ckpt.close()
      fail(f"[{name}] {bad} consecutive non-finite steps (last at step {step + 1}); stopped. "
           f"Last good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}")
    if ((step + 1) % fc.ckpt_every == 0 or step + 1 == fc.steps or stop) and not bad:
      ckpt.save(step + 1, state, {"step": step + 1, "seed": seed})
    if stop:
      preemption.stop_at_checkpoint(name, ckpt)
  ckpt.close()
  return state, last


def fit_update(name: str, model: Model, mesh, fc: FitConfig, example: dict,
               loss_fn: Callable = lm.lm_loss, frozen: Optional[Model] = None):
  """The `step.train_update` triple a `fit` run steps with, for batches like `example`.

  A run that `fit` continues in chunks (SFT between dev checks, KD between epochs: the same
  `fc.schedule_steps`) builds it once and passes it to every chunk, so its jitted update is
  traced and compiled once per batch width, not once per chunk."""
  return train_update(name, model, optimizer(fc), mesh, loss_fn,
                      {k: np.ndim(v) for k, v in example.items()}, len(example["tokens"]),
                      frozen)


def fit(name: str, workdir: str, model: Model, mesh, batch_fn: Callable[[int], dict],
        fc: FitConfig, seed: int = 0, log=print, loss_fn: Callable = lm.lm_loss,
        frozen: Optional[Model] = None, built: Optional[tuple] = None):
  """Trains `model.params` for fc.steps with `batch_fn(step) -> {"tokens", "mask", ...}`.

  Resumes from `workdir/checkpoints/<name>` when a checkpoint exists. `loss_fn` and
  `frozen` (a model it reads but does not train, e.g. a teacher) go to `lm.make_update`
  through `step.train_update`, or `built` is that triple already (`fit_update`, or the
  `pipeline.steps` builder `plan` lowers), trained with an optimizer equal to
  `optimizer(fc)`. A step whose loss or gradient is not finite is skipped (params
  unchanged). Returns (params, last logged metrics).
  """
  tx = optimizer(fc)
  update, state_sh, shape = built or fit_update(name, model, mesh, fc, batch_fn(0), loss_fn,
                                                frozen)
  init = lambda: jax.jit(lambda p: lm.init_state(p, tx), out_shardings=state_sh)(model.params)
  ckpt, start, state = restore_or_init(name, workdir, shape, state_sh, init, fc.keep_ckpts, log)
  rng = jax.random.key(seed)

  def step_fn(state, step):
    host = batch_fn(step)
    state, m = update(state, place(host, update.batch_sh), jax.random.fold_in(rng, step),
                      frozen.params if frozen is not None else None)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    m["tokens_in"] = float(host["tokens"].size)
    return state, m, "non-finite loss or gradient" if m["skipped"] else ""

  state, last = run_loop(name, workdir, ckpt, state, start, fc, step_fn, seed, log)
  return state["params"], last
