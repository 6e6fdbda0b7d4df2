"""The benchmark suite: every benchmark the issues name, one JSON and a markdown table.

    python -m benchmarks.run [--only=decode,rollout,...] [--synthetic=smoke|full|skip]
        [--torch_python=.venv-ref/bin/python] [--out=benchmarks/results/suite_cpu.json]
        [--table=docs/benchmarks_suite.md]

Runs each benchmark in its own process (so one's memory and compile caches cannot skew
another's), in this order, and records the machine (CPU count, memory, jax version and
devices, copy bandwidth and matmul peak as the benchmarks measure them):

  cores         what a second XLA process buys: two processes' arithmetic over one's
  decode        decode tokens/s and its share of the memory-bandwidth limit (batch 1 and 8)
  rollout       multi-turn rollout: KV-cache reuse vs re-prefill, generated tokens/s ratio
  fused_kl      fused vs naive KD loss: peak-memory and time ratios, numerical differences
  ppo_update    PPO update FLOP/s as a share of the measured matmul peak
  retrieval     encoder passages/s vs sentence-transformers; ScaNN recall@3 and QPS vs exact
  server_load   the retrieval server under 32 concurrent clients: p50/p99, failures
  synthetic     wall time of `main` on configs/synthetic.py (:smoke by default; `full` is the
                13-minute embedded default)

Each figure is measured side by side with its baseline inside its benchmark's own run. On a
GPU host the same command runs there and records the device.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks.common import pick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ("cores", "decode", "rollout", "fused_kl", "ppo_update", "retrieval", "server_load",
         "synthetic")


def machine() -> dict:
  import jax
  mem = None
  if os.path.isfile("/proc/meminfo"):
    with open("/proc/meminfo") as f:
      mem = round(int(f.readline().split()[1]) / 2**20, 1)
  return {"cpus": os.cpu_count(), "memory_gib": mem, "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "backend": jax.default_backend(),
          "devices": [str(d.device_kind) for d in jax.devices()]}


def _bench(name, extra, tmp, log):
  out = os.path.join(tmp, f"{name}.json")
  cmd = [sys.executable, "-m", f"benchmarks.{name}", f"--out={out}", *extra]
  t0 = time.time()
  log(f"[suite] {name}: {' '.join(cmd[2:])}")
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  wall = time.time() - t0
  if r.returncode != 0 or not os.path.isfile(out):
    log(f"[suite] {name} FAILED ({r.returncode}): {r.stderr[-1500:]}")
    return {"error": r.stderr[-1500:], "returncode": r.returncode, "wall_s": round(wall, 1)}
  res = json.load(open(out))
  res["wall_s"] = round(wall, 1)
  log(f"[suite] {name}: done in {wall:.0f} s")
  return res


def _synthetic(variant, tmp, log):
  cfg = "configs/synthetic.py" + (":smoke" if variant == "smoke" else "")
  wd = os.path.join(tmp, "synthetic")
  log(f"[suite] synthetic: python -m dgpo_jax.main --config={cfg} --workdir={wd}")
  t0 = time.time()
  r = subprocess.run([sys.executable, "-m", "dgpo_jax.main", f"--config={cfg}",
                      f"--workdir={wd}"], cwd=ROOT, capture_output=True, text=True)
  wall = time.time() - t0
  if r.returncode != 0:
    return {"error": r.stderr[-1500:], "wall_s": round(wall, 1)}
  res = json.load(open(os.path.join(wd, "results.json")))
  return {"config": cfg, "wall_s": round(wall, 1),
          "test_em": {k: v["em"] for k, v in res["test"].items()}}


def _get(d, *path):
  for k in path:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def rows(results: dict) -> list:
  """(benchmark, figure, value, target) rows for the table."""
  f = lambda v, p=3: "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
  out = []
  c = results.get("cores", {})
  out += [("cores", "f32 matmul, two processes together / one",
           f(_get(c, "matmul_gflops", "two_processes_aggregate_over_one"), 2), ""),
          ("cores", "teacher update, two processes together / one",
           f(_get(c, "teacher_step_s", "two_processes_aggregate_over_one"), 2), "")]
  d = results.get("decode", {})
  out += [("decode", "batch-1 decode share of the bandwidth limit",
           f(_get(d, "dgpo_jax", "b1", "decode_share_of_bw_limit")), ""),
          ("decode", "batch-8 decode share of the bandwidth limit",
           f(_get(d, "dgpo_jax", "b8", "decode_share_of_bw_limit")), "≥ 0.60"),
          ("decode", "batch-8 decode tokens/s, ours / transformers",
           f(_get(d, "ratio_ours_over_torch", "b8", "decode_tokens_per_s"), 2), "")]
  r = results.get("rollout", {})
  out.append(("rollout", "KV reuse / re-prefill generated tokens/s (4 turns)",
              f(r.get("ratio_reuse_over_reprefill"), 2), "≥ 2"))
  k = results.get("fused_kl", {})
  out += [("fused_kl", "peak memory fused / naive (8,192 tokens)",
           f(_get(k, "at_memory_tokens", "memory_ratio_fused_over_naive")), "≤ 0.25"),
          ("fused_kl", "time fused / naive (2,048 tokens)", f(k.get("time_ratio_fused_over_naive")),
           "≤ 1.5")]
  p = results.get("ppo_update", {})
  out.append(("ppo_update", "model FLOP/s share of the measured matmul peak",
              f(p.get("share_of_matmul_peak")), "≥ 0.50"))
  q = results.get("retrieval", {})
  default = next((v for v in _get(q, "scann", "variants") or []
                  if v.get("variant") == "default"), {})
  out += [("retrieval", "encoder passages/s, ours / sentence-transformers",
           f(_get(q, "encoder", "ratio_ours_over_st"), 2), ""),
          ("retrieval", "ScaNN recall@3 (default params)", f(default.get("recall_at_3")), "≥ 0.95"),
          ("retrieval", "ScaNN QPS / exact QPS", f(default.get("speedup_vs_exact"), 1), "≥ 5")]
  s = results.get("server_load", {})
  lat = s.get("latency_ms") or {}
  out += [("server_load", "failed requests (32 clients × 200)", f(s.get("failed")), "0"),
          ("server_load", "latency p50 / p99 (ms)", f"{f(lat.get('p50'), 1)} / "
           f"{f(lat.get('p99'), 1)}", ""),
          ("server_load", "requests/s", f(s.get("requests_per_s"), 0), "")]
  y = results.get("synthetic", {})
  out.append(("synthetic", f"wall time of main on {y.get('config', '-')} (s)",
              f(y.get("wall_s"), 0), "≤ 900 (full)"))
  return out


def table(results: dict) -> str:
  m = results["machine"]
  s = (f"Machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['backend']} "
       f"({', '.join(sorted(set(m['devices'])))}), jax {m['jax']}, Python {m['python']}. "
       f"Suite wall time {results['wall_s']:.0f} s.\n\n"
       "| benchmark | figure | measured | target |\n|---|---|---|---|\n")
  for b, fig, v, t in rows(results):
    if b in results:
      s += f"| {b} | {fig} | {v} | {t} |\n"
  return s


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--only", default=",".join(ORDER))
  ap.add_argument("--synthetic", default="smoke", choices=("smoke", "full", "skip"))
  ap.add_argument("--torch_python", default=None)
  ap.add_argument("--out", default=None)
  ap.add_argument("--table", default=None)
  a = ap.parse_args()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  want = pick(a.only, "--only", ORDER, what="benchmarks")
  torch = [f"--torch_python={a.torch_python}"] if a.torch_python else []
  extra = {"decode": torch, "retrieval": torch}
  results = {"machine": machine()}
  t0 = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    for name in ORDER:
      if name not in want:
        continue
      if name == "synthetic":
        if a.synthetic != "skip":
          results[name] = _synthetic(a.synthetic, tmp, log)
      else:
        results[name] = _bench(name, extra.get(name, []), tmp, log)
  results["wall_s"] = round(time.time() - t0, 1)
  text = json.dumps(results, indent=1)
  print(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text)
  if a.table:
    with open(a.table, "w") as f:
      f.write(table(results))
  log(table(results))


if __name__ == "__main__":
  main()
