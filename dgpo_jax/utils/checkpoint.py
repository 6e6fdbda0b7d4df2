"""Orbax checkpoints of a train state pytree plus a JSON metadata record.

A checkpoint step directory only becomes visible to `latest_step()` once orbax has
finalized it (it writes under a temporary name and renames), so a crash mid-save never
leaves a half-written checkpoint that looks complete. Restoring takes an abstract target
whose leaves carry shardings, so a state saved on one mesh restores onto another.
If the newest checkpoint cannot be read it is reported, moved aside (`corrupt-<step>-<time>`)
and the previous one is used.
"""

import logging
import os
import re
import shutil
import sys
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from dgpo_jax.utils.errors import fail


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs (with shardings, if given) for restoring `tree`'s structure."""
  if shardings is None:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def write_error(e: BaseException) -> str:
  """The OS reason inside a failed write (orbax and tensorstore bury it in their text).

  The OSError may be the exception itself, its cause or context, one of a group's, or only
  text ("... [os_error_code='28']", "[Errno 28] ..."); the first one found is reported."""
  seen, todo = set(), [e]
  while todo:  # the exception's whole chain, breadth-first
    x = todo.pop(0)
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    if isinstance(x, OSError) and x.errno:
      return f"{x.strerror or os.strerror(x.errno)} (errno {x.errno})"
    todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
  text = str(e)
  m = re.search(r": ([^:\[]+) \[os_error_code='?(\d+)'?\]", text)
  if m:
    return f"{m.group(1).strip()} (errno {m.group(2)})"
  m = re.search(r"(?:os_error_code|Errno|errno)\W{0,3}(\d+)", text)
  if m:
    return f"{os.strerror(int(m.group(1)))} (errno {m.group(1)})"
  return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


class Checkpointer:
  """Keeps the last `keep` checkpoints of a (state, meta) pair under `directory`."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False),
        item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self.mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.mngr.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = True):
    """Saves synchronously (every process must call it; orbax coordinates hosts).

    A write that fails (disk full, no permission, a quota) is a DgpoError naming the
    directory and the reason; the half-written step is removed and the previous checkpoint
    stays the newest, so the same command resumes from it once the disk is writable."""
    # orbax logs a failed write's traceback from its writer thread before raising it here;
    # the failure is reported below in one line instead.
    absl_log = logging.getLogger("absl")
    level, absl_log.level = absl_log.level, logging.CRITICAL
    try:
      self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=force)
      self.mngr.wait_until_finished()
    except Exception as e:  # orbax/tensorstore wrap the OS error in ValueError and others
      for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
        if name.startswith(f"{step}.") and "tmp" in name and jax.process_index() == 0:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      prev = self.latest_step()
      fail(f"cannot write checkpoint step {step} to {self.directory}: {write_error(e)}; "
           f"{'the newest checkpoint is still step ' + str(prev) if prev else 'no checkpoint'}"
           f" (intact). Free space or fix permissions, then rerun the same command to resume")
    finally:
      absl_log.setLevel(level)

  def restore(self, abstract_state: Any, step: Optional[int] = None):
    """Restores (step, state, meta), falling back to older steps if the newest is unreadable.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with the target shardings; None reads
        the saved tree as it is onto this host's first device, whatever mesh saved it.
      step: a specific step; default the newest readable one.

    Returns:
      (step, state, meta), or None when there is no checkpoint.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    errors, bad = [], []
    for s in steps:
      try:
        target = abstract_state if abstract_state is not None else self._local_target(s)
        out = self.mngr.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        if errors:
          moved = self._set_aside(bad)
          print(f"[checkpoint] WARNING: newest checkpoint(s) unreadable, restored step {s} "
                f"instead: {'; '.join(errors)}; moved aside as {', '.join(moved)}",
                file=sys.stderr, flush=True)
        return s, out["state"], out["meta"]
      except Exception as e:  # orbax raises many types for corrupted/mismatched files
        errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        bad.append(s)
    if errors:
      fail(f"{self.directory}: no readable checkpoint ({'; '.join(errors)})")
    return None

  def _local_target(self, step: int):
    """The saved state's shapes and dtypes, placed on this host's first device."""
    md = ocp.StandardCheckpointer().metadata(os.path.join(self.directory, str(step), "state"))
    tree = getattr(md, "item_metadata", md)
    tree = getattr(tree, "tree", tree)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)

  def _set_aside(self, steps) -> list:
    """Renames unreadable step directories to `corrupt-<step>-<time>` (kept for inspection,
    invisible to orbax), so the run can save those steps again."""
    names = []
    for st in steps:
      src = os.path.join(self.directory, str(st))
      dst = os.path.join(self.directory, f"corrupt-{st}-{int(time.time())}")
      if jax.process_index() == 0 and os.path.isdir(src):
        os.replace(src, dst)
      names.append(os.path.basename(dst))
    self.mngr.reload()
    return names

  def close(self):
    self.mngr.close()
