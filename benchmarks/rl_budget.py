"""Does a longer RL stage move the KD student (issue "Students that learn", item 3)? DGPO and
PPO-after-KD (`ablation=no_teacher_guidance`) at a given PPO budget, on the embedded default.

    python -m benchmarks.rl_budget --workdir=DIR [--steps=200] [--val_every=20]
        [--runs=dgpo,ntg] [--set=k=v ...] [--out=benchmarks/results/rl_budget_NAME.json]

Each run is a real `python -m dgpo_jax.main --config=configs/synthetic.py
--config.ppo.steps=STEPS --config.ppo.val_every=VAL_EVERY` in DIR (`ntg` adds
`--config.ablation=no_teacher_guidance`; `--set` applies to both), so the first one prepares
the world, the teacher and the KD student if DIR does not hold them yet, and the second reuses
them. DIR must not hold an RL stage of these runs trained with another budget: the stage
would resume from it. Each run's `results.json` is kept as `results_rl_budget_<run>.json`.

Per run, from its test results and its RL metrics rows: test EM; the training-rollout EM of
the first vs the last 10% of RL steps with its 95% CI (`report.rl_em_change`, as the run's
report.md computes it); the RL validation EM by step; the policy entropy over the first and
the last 10% of steps; the RL stage's minutes.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import emit, pick
from dgpo_jax.pipeline import report
from dgpo_jax.train import loop
from dgpo_jax.utils import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"dgpo": [], "ntg": ["--config.ablation=no_teacher_guidance"]}


def summarize(results: dict, rows: list) -> dict:
  """One run's figures from its results.json and its RL stage's metrics rows."""
  steps = [r for r in rows if "em" in r]
  if not steps:
    raise SystemExit("benchmarks.rl_budget: the RL metrics hold no training steps")
  change = report.rl_em_change(rows)
  k = change["n_each"] if change else 1  # the entropy over the same steps as the EM change
  ent = [r.get("entropy", float("nan")) for r in steps]
  minutes = (steps[-1]["time"] - steps[0]["time"] + steps[0].get("step_time_s", 0.0)) / 60
  return {
      "test_em": {name: round(v["em"], 4) for name, v in results["test"].items()},
      "training_em_first_last_10pct": change,
      "val_em": {str(r["step"]): r["val_em"] for r in rows if "val_em" in r},
      "entropy_first_last_10pct": [float(np.mean(ent[:k])), float(np.mean(ent[-k:]))],
      "rl_steps": len(steps),
      "rl_minutes": round(minutes, 2),
  }


def run_one(key: str, args, log) -> dict:
  """Runs (or reads back) one run in args.workdir and returns its summary."""
  cmd = [sys.executable, "-m", "dgpo_jax.main", "--config=configs/synthetic.py",
         f"--workdir={args.workdir}", f"--config.ppo.steps={args.steps}",
         f"--config.ppo.val_every={args.val_every}", *RUNS[key],
         *[f"--config.{s}" for s in args.set]]
  log("[rl_budget] " + " ".join(cmd[2:]))
  t0 = time.time()
  r = subprocess.run(cmd, cwd=ROOT)  # its progress shows as it runs
  if r.returncode:
    raise SystemExit(f"benchmarks.rl_budget: run {key} failed with exit status "
                     f"{r.returncode} (its output is above)")
  kept = os.path.join(args.workdir, f"results_rl_budget_{key}.json")
  shutil.copyfile(os.path.join(args.workdir, "results.json"), kept)
  with open(kept) as f:
    results = json.load(f)
  rows = cli.read_jsonl(loop.metrics_file(args.workdir, results["stages"]["rl"]))
  out = summarize(results, rows)
  if out["rl_steps"] != args.steps:
    raise SystemExit(f"benchmarks.rl_budget: run {key}'s RL stage has {out['rl_steps']} "
                     f"steps, not {args.steps}: {args.workdir} held another budget's stage")
  log(f"[rl_budget] {key}: {time.time() - t0:.0f} s")
  return {"command": "python -m " + " ".join(cmd[2:]).replace(f"--workdir={args.workdir} ", ""),
          **out}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--val_every", type=int, default=20)
  ap.add_argument("--runs", default="dgpo,ntg")
  ap.add_argument("--set", action="append", default=[], help="a config override k=v")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  keys = pick(args.runs, "--runs", RUNS)
  log = lambda m: print(m, file=sys.stderr, flush=True)
  out = {"benchmark": "rl_budget", "steps": args.steps, "val_every": args.val_every,
         "overrides": args.set, "runs": {k: run_one(k, args, log) for k in keys}}
  emit(out, args.out)


if __name__ == "__main__":
  main()
