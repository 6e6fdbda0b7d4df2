"""How long two processes take to exit when both refuse a config mismatch (issue 18).

    python -m benchmarks.multihost_exit [--trials=25] [--load=2] [--out=FILE]

Each trial starts two `main` processes (`configs/synthetic.py:lm`, 4 fake CPU devices each)
joined by `jax.distributed` over 127.0.0.1, given different seeds, so both stop at the config
check with exit status 2. `--load` busy processes (numpy matmuls) share the cores meanwhile,
as a test suite's other worker does. A trial whose slower process exits more than
`--stall_s` after the faster one counts as a stall: the coordinator outliving the other
client until the runtime's heartbeat timeout (`parallel.distributed.shutdown`). Prints JSON.
"""

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

from benchmarks.common import emit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ("--config.data.max_docs=200", "--config.data.seq_len=64", "--config.model.d_model=64",
        "--config.model.n_layers=2", "--config.model.d_ff=128",
        "--config.tokenizer.vocab_size=512", "--config.mesh=data:-1")


def _busy(seconds: float):
  import numpy as np
  a, t0 = np.random.rand(1500, 1500), time.time()
  while time.time() - t0 < seconds:
    a @ a


def _trial(workdir: str) -> list:
  """Exit status and seconds to exit of each of the two processes."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  t0, out = time.time(), [None, None]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "dgpo_jax.main", "--config=configs/synthetic.py:lm",
       f"--workdir={workdir}", *ARGS, f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", f"--config.seed={i}"],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      for i in range(2)]

  def wait(i):
    out[i] = (procs[i].wait(), round(time.time() - t0, 1))
  threads = [threading.Thread(target=wait, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--trials", type=int, default=25)
  ap.add_argument("--load", type=int, default=2, help="busy processes beside the trials")
  ap.add_argument("--stall_s", type=float, default=30.0)
  ap.add_argument("--workdir", default="/tmp/dgpo_multihost_exit")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  busy = [multiprocessing.Process(target=_busy, args=(1e9,), daemon=True) for _ in range(a.load)]
  for p in busy:
    p.start()
  trials = []
  try:
    for k in range(a.trials):
      trials.append(_trial(os.path.join(a.workdir, str(k))))
      print(f"[multihost_exit] trial {k + 1}/{a.trials}: {trials[-1]}", file=sys.stderr)
  finally:
    for p in busy:
      p.terminate()
  gaps = [abs(x[1] - y[1]) for x, y in trials]
  emit({"benchmark": "multihost_exit", "cpus": os.cpu_count(), "load": a.load,
        "trials": len(trials), "all_exit_2": all(rc == 2 for t in trials for rc, _ in t),
        "stalls": sum(g > a.stall_s for g in gaps), "stall_s": a.stall_s,
        "max_exit_s": max(s for t in trials for _, s in t), "max_gap_s": max(gaps),
        "exits_s": [[s for _, s in t] for t in trials]}, a.out)


if __name__ == "__main__":
  main()
