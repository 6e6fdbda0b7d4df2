"""Progress lines (step, rate, ETA) for long jobs, and a JSONL metrics writer."""

import json
import os
import sys
import time


def log(msg: str):
  """A line on stdout from process 0 only (every process runs the same host loop)."""
  import jax
  if jax.process_index() == 0:
    print(msg, flush=True)


class Progress:
  """Prints `name step/total  rate/s  ETA` at most every `every_s` seconds."""

  def __init__(self, name: str, total: int, unit: str = "step", every_s: float = 5.0,
               start: int = 0, stream=None):
    self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
    self.start_count = start
    self.count = start
    self.t0 = time.time()
    self.last = 0.0
    self.stream = stream or sys.stderr

  def update(self, n: int = 1, extra: str = "", force: bool = False):
    self.count += n
    now = time.time()
    if not force and now - self.last < self.every_s and (self.total <= 0 or
                                                          self.count < self.total):
      return
    self.last = now
    done = self.count - self.start_count
    rate = done / max(now - self.t0, 1e-9)
    if self.total > 0:  # total unknown (streaming) → count and rate only
      left = (self.total - self.count) / rate if rate > 0 else float("inf")
      eta = f"{left:,.0f}s" if left != float("inf") else "?"
      where = f"{self.count}/{self.total}"
    else:
      eta, where = "?", f"{self.count}"
    print(f"[{self.name}] {self.unit} {where}  {rate:,.2f} {self.unit}/s  "
          f"ETA {eta}  {extra}".rstrip(), file=self.stream, flush=True)


def metrics_path(workdir: str, name: str) -> str:
  """Where `MetricsWriter(workdir, name)` appends its rows."""
  return os.path.join(workdir, f"{name}.jsonl")


class MetricsWriter:
  """Appends one JSON object per line to `<workdir>/<name>.jsonl` and the same scalars to a
  TensorBoard event file under `<workdir>/tensorboard/<name>` (process 0 only)."""

  def __init__(self, workdir: str, name: str = "metrics", enabled: bool = True,
               tensorboard: bool = True):
    self.enabled = enabled
    self.path = metrics_path(workdir, name)
    self.tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from dgpo_jax.utils.tensorboard import EventWriter
        self.tb = EventWriter(os.path.join(workdir, "tensorboard", name))

  def write(self, step: int, **metrics):
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    row.update({k: _jsonable(v) for k, v in metrics.items()})
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
      if self.tb is not None:
        self.tb.scalars(step, {k: v for k, v in row.items() if k not in ("step", "time")})
    except OSError as e:
      from dgpo_jax.utils import cli
      cli.write_failed(e.filename or self.path, e)


def _jsonable(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return str(v)
