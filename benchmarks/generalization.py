"""Training-split vs test-split EM of a scaling grid's students, and how their queries differ.

A student KD'd on the teacher's trajectories of the training questions can answer those from
what it memorized of their subjects; held-out subjects it must search for by name and read.
This evaluates one stage's student of each cell (greedy, the first `--questions` of each
split) and, besides EM and the evaluator's ARCap figures, two query figures per split:
  first_query_has_subject  the first search query contains the first hop's entity name, as
                           the question spells it (rows whose question contains that name);
  first_query_gold         the first search retrieves the first hop's gold passage.

  python -m benchmarks.generalization --workdir=DIR [--variant=scaling] [--seed=0] \
      [--method=dgpo] [--stage=kd] [--questions=300] [--only=REGEX] [--out=FILE] [--md=FILE]

DIR is a `python -m dgpo_jax.scaling` workdir and `--variant` the configs/synthetic.py variant
its grid ran with (`scaling_smoke` for the smoke grid): the variant's grid names the cells
(`t<teacher>_s<student>/`; cells not run yet are skipped). `--method` and `--stage` (its `kd`
or `rl` stage) name the checkpoint the way the pipeline names it for that cell and training
seed: `--method=dgpo --stage=kd` (the default) is the KD stage DGPO and KD share,
`--method=sft_ppo --stage=kd` SFT→PPO's SFT, `--stage=rl` the final RL student. `--only`
keeps the cells whose directory name matches a regular expression. One XLA:CPU thread;
docs/scaling.md reads its output and gives its time.
"""

import argparse
import os
import re
import sys

from benchmarks.common import emit


def cells(config) -> list:
  """[(teacher, student)] of a scaling config's grid, sorted by teacher then student size."""
  from dgpo_jax.pipeline import scaling
  size = lambda shape: tuple(map(int, shape.split("x")))
  return sorted(scaling.grid(config.scaling), key=lambda c: (size(c[0]), size(c[1])))


def checkpoint_name(cell_config, method: str, stage: str, seed: int) -> str:
  """The checkpoint `method`'s run at `seed` trains in its `stage` ("kd" or "rl") in the cell
  of `cell_config` (`scaling.cell_config`), named by the pipeline's own rule
  (`method.stage_names`)."""
  from dgpo_jax.pipeline import method as method_lib
  from dgpo_jax.pipeline import stages, tables
  c = tables.run_config(cell_config, method, "", seed)
  names = method_lib.stage_names(c, stages.plan(c))
  if stage not in names:
    sys.exit(f"--method={method} has no {stage} stage (it has: {', '.join(names)})")
  return names[stage]


def query_figures(rows: list, trajs: list) -> dict:
  """The two query figures of the module docstring, over the rows they apply to."""
  named, has, gold = 0, 0, []
  for q, t in zip(rows, trajs):
    first = (q.get("hops") or [[None]])[0][0]
    if first and first.lower() in q["question"].lower():
      named += 1
      has += bool(t.queries) and first.lower() in t.queries[0].lower()
    if q.get("gold_ids") and t.doc_ids:
      gold.append(q["gold_ids"][0] in list(t.doc_ids[0]))
  return {"first_query_has_subject": has / named if named else None, "named_rows": named,
          "first_query_gold": sum(gold) / len(gold) if gold else None}


def evaluate_cell(config, teacher: str, student: str, seed_dir: str, ckpt_name: str,
                  n: int) -> dict:
  """One cell's student of checkpoint `ckpt_name` on the first `n` questions of each split,
  greedy; `config` is the cell's (`scaling.cell_config`)."""
  from dgpo_jax.data import qa
  from dgpo_jax.eval import evaluate as evaluation
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import evaluate_stage, setup
  from dgpo_jax.rollout.engine import RolloutConfig
  from dgpo_jax.train import loop
  ckpt = loop.checkpoint_dir(seed_dir, ckpt_name)
  if not os.path.isdir(ckpt):
    sys.exit(f"{ckpt}: no such checkpoint (has this cell's run finished?)")
  mesh = sharding.make_mesh(config.mesh)
  model, run = evaluate_stage.load_checkpoint(config, ckpt, mesh, setup.rules(config), seed_dir)
  retriever = evaluate_stage.retriever_for(config, run)
  rc = RolloutConfig.from_config(config)
  out = {"teacher": teacher, "student": student, "checkpoint": ckpt}
  for split in ("train", "test"):
    rows = qa.read_qa(f"{split}={os.path.join(seed_dir, 'world', split + '.jsonl')}").rows[:n]
    figs, trajs = evaluation.evaluate(model.graphdef, model.params, model.tokenizer, retriever,
                                      rc, rows, config.eval.batch_size, preemptible=False)
    out[split] = {"n": figs["n"], "em": figs["em"], "em_by_family": figs["em_by_family"],
                  "hit_ratio_first": figs["arcap"]["hit_ratio_first"],
                  "em_given_gold_retrieved": figs["arcap"]["em_given_gold_retrieved"],
                  **query_figures(rows, trajs)}
    print(f"[generalization] t{teacher} s{student} {split}: EM {figs['em']:.3f}", flush=True)
  return out


def markdown(rows: list) -> str:
  f = lambda x: "-" if x is None else f"{x:.3f}"
  s = ("| teacher | student | EM train | EM test | first query names the subject, train / test "
       "| first query finds the gold passage, train / test | EM when the answer was retrieved, "
       "train / test |\n|---|---|---|---|---|---|---|\n")
  for r in rows:
    a, b = r["train"], r["test"]
    s += (f"| {r['teacher']} | {r['student']} | {f(a['em'])} | {f(b['em'])} | "
          f"{f(a['first_query_has_subject'])} / {f(b['first_query_has_subject'])} | "
          f"{f(a['first_query_gold'])} / {f(b['first_query_gold'])} | "
          f"{f(a['em_given_gold_retrieved'])} / {f(b['em_given_gold_retrieved'])} |\n")
  return s


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="a `python -m dgpo_jax.scaling` workdir")
  ap.add_argument("--variant", default="scaling", help="configs/synthetic.py's variant the "
                  "grid ran with (scaling, or scaling_smoke for the smoke grid)")
  ap.add_argument("--seed", type=int, default=0, help="the training seed whose runs to read")
  ap.add_argument("--method", default="dgpo", help="the method whose stage to evaluate")
  ap.add_argument("--stage", default="kd", choices=("kd", "rl"), help="that method's stage")
  ap.add_argument("--questions", type=int, default=300, help="first N of each split")
  ap.add_argument("--only", default="", help="regular expression on the cells' directory names")
  ap.add_argument("--out", default="", help="JSON output file")
  ap.add_argument("--md", default="", help="markdown table output file")
  a = ap.parse_args(argv)
  os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  from configs import synthetic
  from dgpo_jax.pipeline import scaling, stages, tables
  if not os.path.isdir(a.workdir):
    sys.exit(f"--workdir={a.workdir}: no such directory")
  try:
    config = synthetic.get_config(a.variant)
  except ValueError as e:
    sys.exit(f"--variant={a.variant}: {e}")
  if "scaling" not in config:
    sys.exit(f"--variant={a.variant}: not a scaling grid (scaling, scaling_smoke, scaling_gpu)")
  if a.method not in stages.METHODS:
    sys.exit(f"--method={a.method}: unknown (known: {', '.join(stages.METHODS)})")
  rows = []
  for teacher, student in cells(config):
    cell = scaling.cell_dir(a.workdir, teacher, student)
    if not re.search(a.only, os.path.basename(cell)):
      continue
    seed_dir = tables.seed_dir(cell, a.seed)
    if not os.path.isdir(seed_dir):
      print(f"[generalization] {seed_dir}: not run yet, skipped", flush=True)
      continue
    c = scaling.cell_config(config, teacher, student)
    name = checkpoint_name(c, a.method, a.stage, a.seed)
    rows.append(evaluate_cell(c, teacher, student, seed_dir, name, a.questions))
  if not rows:
    sys.exit(f"--workdir={a.workdir}: none of --variant={a.variant}'s cells has a "
             f"seed{a.seed}/ run (a scaling workdir of that grid?)")
  md = markdown(rows)
  print(md)
  if a.md:
    with open(a.md, "w") as fh:
      fh.write(md)
  emit({"workdir": os.path.abspath(a.workdir), "seed": a.seed, "method": a.method,
        "stage": a.stage,
        "questions": a.questions, "cells": rows}, a.out)


if __name__ == "__main__":
  main()
