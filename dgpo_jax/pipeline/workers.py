"""Independent parts of a grid run side by side, one spawned process each.

An XLA CPU process of the synthetic configs computes on one thread
(`--xla_cpu_multi_thread_eigen=false`, configs/synthetic.py), so parts that share nothing can
use a machine's N cores as N processes. Whether that is faster than one after another depends
on the machine: `python -m benchmarks.cores` measures it (docs/benchmarks.md). Each part writes
its output to its own log file; the parent prints every part's newest line every `every_s`
seconds, passes a SIGTERM on to the parts (each checkpoints and stops with exit status 75),
and when a part fails names it and shows its log's last lines.
"""

import dataclasses
import multiprocessing
import os
import signal
import sys
import time
from typing import Callable

from dgpo_jax.utils import preemption
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import log


@dataclasses.dataclass(frozen=True)
class Part:
  """One process's work: `target(*args)`, a module-level function (it is pickled by name)."""
  name: str
  target: Callable
  args: tuple = ()


def _child(target, args, log_path):
  """A part's process: output into its log, then the CLI body's error handling."""
  fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  sys.stdout.reconfigure(line_buffering=True)
  sys.stderr.reconfigure(line_buffering=True)
  from dgpo_jax.utils import cli
  cli.run(target, ["part"], *args)  # exits 75 on preemption, 2 on a DgpoError


def last_lines(path: str, n: int = 1, max_bytes: int = 16384) -> list:
  """The last `n` non-empty lines of a log (progress lines included)."""
  try:
    with open(path, "rb") as f:
      f.seek(max(0, os.path.getsize(path) - max_bytes))
      text = f.read().decode("utf-8", "replace")
  except OSError:
    return []
  lines = [l.strip() for l in text.replace("\r", "\n").split("\n") if l.strip()]
  return lines[-n:]


def run(parts, log_dir: str, workers: int, every_s: float = 60.0):
  """Runs `parts` in at most `workers` processes at a time; returns when all have finished.

  Raises `preemption.Preempted` when a part stopped on SIGTERM, and a DgpoError naming the
  part and quoting its log when one failed (the others are still waited for, so that each
  stops at a checkpoint)."""
  os.makedirs(log_dir, exist_ok=True)
  ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited JAX state
  todo, running, codes = list(parts), {}, {}
  logs = {p.name: os.path.join(log_dir, f"{p.name}.log") for p in parts}
  log(f"[workers] {len(parts)} parts, {min(workers, len(parts))} at a time; their output: "
      f"{', '.join(logs.values())}")
  forwarded, shown = False, time.time()
  while running or (todo and not forwarded):
    while todo and len(running) < workers and not forwarded:
      p = todo.pop(0)
      proc = ctx.Process(target=_child, args=(p.target, p.args, logs[p.name]), name=p.name)
      proc.start()
      running[p.name] = proc
      log(f"[workers] {p.name}: started (pid {proc.pid})")
    time.sleep(0.5)
    if preemption.pending() and not forwarded:
      forwarded = True  # the parts checkpoint and exit 75; the rest are not started
      for proc in running.values():
        os.kill(proc.pid, signal.SIGTERM)
    for name, proc in list(running.items()):
      if not proc.is_alive():
        proc.join()
        codes[name] = proc.exitcode
        del running[name]
        log(f"[workers] {name}: finished, exit status {proc.exitcode}")
    if running and time.time() - shown >= every_s:
      shown = time.time()
      for name in running:
        log(f"[workers] {name}: {' '.join(last_lines(logs[name]))}")
  _check(codes, logs, forwarded)


def _check(codes: dict, logs: dict, forwarded: bool):
  # a part that got the SIGTERM before its handler was installed died of it: stopped too
  stopped = (0, preemption.EXIT_CODE) + ((-signal.SIGTERM,) if forwarded else ())
  bad = {n: c for n, c in codes.items() if c not in stopped}
  if bad:
    n, c = next(iter(bad.items()))
    tail = "\n  ".join(last_lines(logs[n], 12))
    fail(f"{n} stopped with exit status {c} (log {logs[n]}); its last lines:\n  {tail}")
  if forwarded or any(c == preemption.EXIT_CODE for c in codes.values()):
    raise preemption.Preempted(f"preempted: the parts checkpointed ({', '.join(codes)} ran); "
                               f"rerun the same command to resume "
                               f"(exit status {preemption.EXIT_CODE})")
