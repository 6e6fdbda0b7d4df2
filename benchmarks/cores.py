"""What the machine's second core buys an XLA:CPU job: one process against two side by side,
and one process over one host device against two.

    python -m benchmarks.cores [--repeats=20] [--width=512] [--out=FILE.json]

The synthetic configs run each process on one XLA thread (`--xla_cpu_multi_thread_eigen=false`)
and `:scaling` / `tables` parts use two worker processes on the 2-core machine, on the
assumption that two processes get about twice the arithmetic of one. This measures that
assumption on the machine at hand, for

  python_loop   a plain Python integer loop (no vector arithmetic; million iterations/s);
  matmul        a jitted f32 1,024² matmul (GFLOP/s per process);
  teacher_step  the synthetic teacher's full update (d=128, 4 layers, 16 rows × `--width`
                tokens; `benchmarks.train_step.step_time`), seconds per step;

each timed in one process alone and in two identical processes timed together once both have
compiled (the aggregate is the sum of their rates), and the teacher step also in one process
whose batch is split over two host devices (`--xla_force_host_platform_device_count=2`, mesh
`data:-1`).
Run it on a quiet machine: anything else running takes from both.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import emit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_MM = 1024


def _barrier():
  """Tells the parent this worker has compiled, and waits for its word to start timing."""
  print("ready", flush=True)
  sys.stdin.readline()


def _worker(kind: str, devices: int, repeats: int, width: int) -> dict:
  """Runs in a child process: times one kind of work (after every worker has compiled) and
  returns its figures."""
  os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                             "--xla_cpu_multi_thread_eigen=false")
  if kind not in ("python_loop", "matmul", "teacher_step"):
    raise SystemExit(f"benchmarks.cores: unknown worker kind {kind!r}")
  if kind == "python_loop":
    _barrier()
    n, t, total = 2_000_000 * repeats, time.perf_counter(), 0
    for i in range(n):
      total += i
    return {"mloops_per_s": n / (time.perf_counter() - t) / 1e6}
  import jax
  import jax.numpy as jnp
  if kind == "matmul":
    a = jnp.ones((N_MM, N_MM), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    _barrier()
    t = time.perf_counter()
    for _ in range(repeats * 4):
      f(a).block_until_ready()
    dt = time.perf_counter() - t
    return {"gflops": 2 * N_MM**3 * repeats * 4 / dt / 1e9}
  from benchmarks import train_step
  from dgpo_jax.models import config as model_config
  cfg = model_config.preset("tiny-llama", d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                            d_ff=384, vocab_size=2048, max_seq_len=4096, scan_unroll=4)
  return {"step_s": train_step.step_time(cfg, width, repeats, after_compile=_barrier)}


def _run(kind: str, processes: int, devices: int, repeats: int, width: int) -> list:
  """Starts `processes` identical workers together and returns each one's figures."""
  cmd = [sys.executable, "-m", "benchmarks.cores", f"--worker={kind}", f"--devices={devices}",
         f"--repeats={repeats}", f"--width={width}"]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT) for _ in range(processes)]
  for p in procs:  # every worker compiled: only the timed loops overlap
    if p.stdout.readline().strip() != "ready":
      for q in procs:  # the others would wait for their word forever
        q.kill()
      raise SystemExit(f"benchmarks.cores: worker {kind} stopped before timing")
  for p in procs:
    p.stdin.write("go\n")
    p.stdin.flush()
  out = []
  for p in procs:
    stdout, _ = p.communicate()
    if p.returncode:
      raise SystemExit(f"benchmarks.cores: worker {kind} exited with status {p.returncode}")
    out.append(json.loads(stdout.strip().splitlines()[-1]))
  return out


def measure(repeats: int, width: int) -> dict:
  py1 = _run("python_loop", 1, 1, repeats, width)[0]["mloops_per_s"]
  py2 = [r["mloops_per_s"] for r in _run("python_loop", 2, 1, repeats, width)]
  mm1 = _run("matmul", 1, 1, repeats, width)[0]["gflops"]
  mm2 = [r["gflops"] for r in _run("matmul", 2, 1, repeats, width)]
  st1 = _run("teacher_step", 1, 1, repeats, width)[0]["step_s"]
  st2 = [r["step_s"] for r in _run("teacher_step", 2, 1, repeats, width)]
  st_dev2 = _run("teacher_step", 1, 2, repeats, width)[0]["step_s"]
  return {
      "python_loop_mloops_per_s": {"one_process": py1, "two_processes_each": py2,
                                   "two_processes_aggregate_over_one": sum(py2) / py1},
      "matmul_gflops": {"one_process": mm1, "two_processes_each": mm2,
                        "two_processes_aggregate_over_one": sum(mm2) / mm1},
      "teacher_step_s": {"one_process": st1, "two_processes_each": st2,
                         "two_processes_aggregate_over_one": sum(st1 / s for s in st2),
                         "two_devices_one_process": st_dev2,
                         "two_devices_speedup": st1 / st_dev2},
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--repeats", type=int, default=20)
  ap.add_argument("--width", type=int, default=512)
  ap.add_argument("--out", default=None)
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
  ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    print(json.dumps(_worker(args.worker, args.devices, args.repeats, args.width)))
    return
  result = {"benchmark": "cores", "cpus": os.cpu_count(), "repeats": args.repeats,
            "width": args.width, "rows": 16}
  result.update(measure(args.repeats, args.width))
  emit(result, args.out)


if __name__ == "__main__":
  main()
