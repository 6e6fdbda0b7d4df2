"""Preemption: stop at a step boundary that every process agrees on, checkpoint, exit 75.

Spot GPU nodes and preemptible TPU slices get SIGTERM some seconds before they are taken.
`install()` (done by every CLI through `cli.run`) turns SIGTERM into a request; each host loop
calls `requested()` once per step (optimizer step, RL step, rollout batch) and, when it says
so, finishes the step it is in, writes its checkpoint and raises `Preempted`. The CLI prints
one line and exits with `EXIT_CODE` (75, EX_TEMPFAIL: "try again"), so a scheduler can requeue
the same command, which resumes from that checkpoint.

With several processes the notice may reach one host only, yet all must save at the same
step: `requested()` is a collective (every process calls it at the same point of the same
loop), the OR of every host's SIGTERM flag and of JAX's own preemption sync point (the
coordination service's notice, e.g. a TPU maintenance event). A second SIGTERM while
stopping is logged and otherwise ignored: the save in progress finishes, and orbax's
write-then-rename keeps the newest complete checkpoint readable even if SIGKILL follows.
"""

import signal
import sys
import threading

import numpy as np

from dgpo_jax.utils.errors import DgpoError

EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL

_state = {"flag": False, "signals": 0, "calls": 0, "previous": None}


class Preempted(DgpoError):
  """Raised after a stage has checkpointed in response to a preemption notice."""


def install():
  """Turns SIGTERM into a stop request (main thread only; a no-op elsewhere)."""
  if _state["previous"] is not None or threading.current_thread() is not threading.main_thread():
    return
  _state["previous"] = signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame):
  del signum, frame
  _state["signals"] += 1
  _state["flag"] = True
  note = ("finishing the current step, then checkpointing" if _state["signals"] == 1 else
          "already stopping; the checkpoint in progress is completed")
  print(f"[preemption] SIGTERM received: {note}", file=sys.stderr, flush=True)


def request():
  """Asks for a stop as SIGTERM would (tests, and hosts with another notice channel)."""
  _state["flag"] = True


def reset():
  """Forgets any request and gives SIGTERM back its previous handler (tests)."""
  if _state["previous"] is not None:
    signal.signal(signal.SIGTERM, _state["previous"])
  _state.update(flag=False, signals=0, calls=0, previous=None)


def pending() -> bool:
  """This process's own stop request (no collective): for a parent that only waits on its
  child processes (`pipeline.workers`)."""
  return _state["flag"]


def requested() -> bool:
  """True when this step is where every process stops. Collective with several processes:
  call it at the same point of the same loop on every process."""
  import jax
  _state["calls"] += 1
  if jax.process_count() == 1:
    return _state["flag"]
  from jax.experimental import multihost_utils
  mine = np.array([int(_state["flag"])], np.int32)
  flags = np.asarray(multihost_utils.process_allgather(mine))
  stop = bool(flags.max())
  try:  # JAX's notice, when its preemption service runs (the default with jax.distributed)
    stop |= bool(multihost_utils.reached_preemption_sync_point(_state["calls"]))
  except RuntimeError:
    pass
  if stop:
    _state["flag"] = True
  return stop


def stop_at_checkpoint(where: str, ckpt):
  """Closes a training loop's `Checkpointer` (its stop-step save written) and raises
  `Preempted` naming the newest step on disk."""
  saved = ckpt.latest_step() or 0
  ckpt.close()
  stop(where, saved)


def stop(where: str, saved_step: int):
  """Raises `Preempted`; call it once the stage's checkpoint (`saved_step`) is written."""
  raise Preempted(f"preempted: {where} checkpointed at step {saved_step}; rerun the same "
                  f"command to resume (exit status {EXIT_CODE})")
