"""Wall times of the embedded default's runs against the budgets of issue "Students that learn"
(item 5), each a real `main` / `tables` process started from empty caches where the budget
says so.

    python -m benchmarks.synthetic_times --workdir=DIR [--only=first,method,seed,smoke,tables]
        [--set=k=v ...] [--out=benchmarks/results/synthetic_times_cpu.json]

  smoke   `main --config=configs/synthetic.py:smoke` in a fresh workdir, empty XLA cache (≤ 2 min)
  first   `main --config=configs/synthetic.py` in a fresh workdir, empty XLA cache (≤ 20 min)
  method  then `--config.method=sft_ppo` in the same workdir: a method with its own
          distillation stage and RL, preparation and TGO reused (≤ 5 min)
  seed    then `--config.seed=1 --config.world.seed=0` in the same workdir: another training
          seed on the prepared world (its own KD and RL; ≤ 5 min)
  tables  `tables --config=configs/synthetic.py:tables` in a fresh workdir, empty XLA cache
          (≤ 90 min; not in the default set)

`method` and `seed` reuse the compilation cache that `first` filled, as a user's second run
does. `--prepared=DIR` times `method` and `seed` without paying for a new preparation: what
`prepare` and TGO left in DIR (`prepare.PREPARED`) is copied into the empty workdir, and
`first` there (recorded as `first_after_prepare`, no budget) runs only the first run's KD,
RL and evaluations from an empty compilation cache, which fills it with every program the
later runs load (the preparation's own, LM pretraining and SFT, no later run uses).
Every figure comes with the run's test EMs, so a time is never quoted for a run whose
students did not learn. Each run's output, progress lines included, goes to DIR/<run>.log.
Prints JSON (and writes it to --out).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import emit, pick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = {"smoke": 120, "first": 1200, "method": 300, "seed": 300, "tables": 5400}
DEFAULT = ("smoke", "first", "method", "seed")


def _timed(args, env, log, log_path):
  """Runs `python -m args`, its output (progress lines included) into `log_path`; seconds."""
  cmd = [sys.executable, "-m", *args]
  log(f"[synthetic_times] {' '.join(cmd[2:])}  (output: {log_path})")
  t0 = time.time()
  with open(log_path, "a") as f:
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
  wall = round(time.time() - t0, 1)
  if r.returncode:
    with open(log_path) as f:
      tail = f.read()[-2000:]
    raise SystemExit(f"error: {' '.join(args)} failed ({r.returncode}); the end of "
                     f"{log_path}:\n{tail}")
  return wall


def _ems(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  return {k: round(v["em"], 3) for k, v in res["test"].items()}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="an empty directory for the runs")
  ap.add_argument("--only", default=",".join(DEFAULT))
  ap.add_argument("--set", action="append", default=[], help="a config override k=v, all runs")
  ap.add_argument("--prepared", default=None,
                  help="a workdir whose preparation and TGO finished: copied, not redone")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  want = pick(a.only, "--only", BUDGET_S)
  if a.prepared and (not os.path.isfile(os.path.join(a.prepared, "prepare_result.json")) or
                     not os.path.isdir(os.path.join(a.prepared, "tgo"))):
    sys.exit(f"error: --prepared: {a.prepared} holds no finished preparation and TGO "
             f"(prepare_result.json and tgo/)")
  if a.prepared and not {"smoke", "tables"}.isdisjoint(want):
    sys.exit("error: --prepared times method and seed (and first's remainder) only")
  if os.path.isdir(a.workdir) and os.listdir(a.workdir):
    # a finished run there would be read back, and its time quoted as a run's from scratch
    sys.exit(f"error: --workdir: {a.workdir} is not empty; these times are of runs from "
             f"empty workdirs and caches")
  os.makedirs(a.workdir, exist_ok=True)
  log = lambda m: print(m, file=sys.stderr, flush=True)
  sets = [f"--config.{s}" for s in a.set]
  out = {"benchmark": "synthetic_times", "cpus": os.cpu_count(), "overrides": a.set,
         "prepared": a.prepared, "budget_s": {k: BUDGET_S[k] for k in want}, "runs": {}}

  def run(key, args, workdir, cache, ems=True):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
    wall = _timed(args + [f"--workdir={workdir}"] + sets, env, log,
                  os.path.join(a.workdir, f"{key}.log"))
    row = {"command": "python -m " + " ".join(args + sets), "wall_s": wall,
           "within_budget": wall <= BUDGET_S[key] if key in BUDGET_S else None}
    if ems:
      row["test_em"] = _ems(workdir)
    out["runs"][key] = row
    log(f"[synthetic_times] {key}: {wall:.0f} s (budget {BUDGET_S.get(key, '-')} s)")

  main_cfg = ["dgpo_jax.main", "--config=configs/synthetic.py"]
  if "smoke" in want:
    run("smoke", ["dgpo_jax.main", "--config=configs/synthetic.py:smoke"],
        os.path.join(a.workdir, "smoke"), os.path.join(a.workdir, "xla_smoke"))
  default, cache = os.path.join(a.workdir, "default"), os.path.join(a.workdir, "xla_default")
  if a.prepared:
    from dgpo_jax.pipeline import prepare
    prepare.copy_prepared(a.prepared, default)
    log(f"[synthetic_times] preparation and TGO copied from {a.prepared}")
  if "first" in want:
    run("first_after_prepare" if a.prepared else "first", main_cfg, default, cache)
  if "method" in want:
    run("method", main_cfg + ["--config.method=sft_ppo"], default, cache)
  if "seed" in want:
    run("seed", main_cfg + ["--config.seed=1", "--config.world.seed=0"], default, cache)
  if "tables" in want:
    tables = os.path.join(a.workdir, "tables")
    run("tables", ["dgpo_jax.tables", "--config=configs/synthetic.py:tables"], tables,
        os.path.join(a.workdir, "xla_tables"), ems=False)
  emit(out, a.out)


if __name__ == "__main__":
  main()
