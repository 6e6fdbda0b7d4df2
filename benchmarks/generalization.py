"""Training-split vs test-split EM of a scaling grid's students, and how their queries differ.

A student KD'd on the teacher's trajectories of the training questions can answer those from
what it memorized of their subjects; held-out subjects it must search for by name and read.
This evaluates one stage's student of each cell (greedy, the first `--questions` of each
split) and, besides EM and the evaluator's ARCap figures, two query figures per split:
  first_query_has_subject  the first search query contains the first hop's entity name, as
                           the question spells it (rows whose question contains that name);
  first_query_gold         the first search retrieves the first hop's gold passage.

  python -m benchmarks.generalization --workdir=DIR [--variant=] [--seed=0] [--stage=STAGE] \
      [--questions=300] [--only=REGEX] [--out=FILE] [--md=FILE]

DIR is a `python -m dgpo_jax.scaling` workdir (cells `t<teacher>_s<student>/`). `--stage`
names the checkpoint in each cell's seed workdir, or the unique prefix of its name (the
default: the KD stage that DGPO and KD share; `kd-ce_fkl-lam0` is SFT→PPO's SFT; `rl-dgpo`).
`--only` keeps the cells whose directory name matches a regular expression. One XLA:CPU
thread; docs/scaling.md reads its output and gives its time.
"""

import argparse
import glob
import os
import re
import sys

from benchmarks.common import emit

_CELL = re.compile(r"^t(\d+x\d+x\d+)_s(\d+x\d+x\d+)$")


def cells(workdir: str) -> list:
  """[(teacher, student, cell dir)] of a scaling workdir, sorted by teacher then student."""
  out = []
  for d in sorted(os.listdir(workdir)):
    m = _CELL.match(d)
    if m:
      out.append((m.group(1), m.group(2), os.path.join(workdir, d)))
  key = lambda c: (tuple(map(int, c[0].split("x"))), tuple(map(int, c[1].split("x"))))
  return sorted(out, key=key)


def stage_dir(seed_dir: str, stage: str, seed: int) -> str:
  """`seed_dir`'s checkpoint of `stage`: that name (for seeds > 0 with its `-s<seed>` suffix),
  else the one stage whose name starts with it."""
  base = os.path.join(seed_dir, "checkpoints")
  for name in (stage, f"{stage}-s{seed}"):
    if os.path.isdir(os.path.join(base, name)):
      return os.path.join(base, name)
  found = sorted(glob.glob(os.path.join(base, stage + "*")))
  if len(found) != 1:
    sys.exit(f"{base}: no stage {stage!r}, and {len(found)} start with it "
             f"({[os.path.basename(f) for f in found]}); give another --stage")
  return found[0]


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


def evaluate_cell(teacher: str, student: str, seed_dir: str, stage: str, seed: int, n: int,
                  variant: str = "") -> dict:
  """One cell's student of `stage` on the first `n` questions of each split, greedy."""
  from configs import synthetic
  from dgpo_jax.data import qa
  from dgpo_jax.eval import evaluate as evaluation
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import evaluate_stage, scaling, setup
  from dgpo_jax.rollout.engine import RolloutConfig
  config = synthetic.get_config(variant)
  config.teacher.update(scaling.parse_shape(teacher, "teachers"))
  config.student.update(scaling.parse_shape(student, "students"))
  ckpt = stage_dir(seed_dir, stage, seed)
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
  ap.add_argument("--variant", default="", help="configs/synthetic.py's variant the grid ran "
                  "with (scaling_smoke for the smoke grid; the default's rollout otherwise)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--stage", default="kd-ce_fkl-lam1-correct-allq-t0",
                  help="checkpoint stage name, or the unique prefix of one")
  ap.add_argument("--questions", type=int, default=300, help="first N of each split")
  ap.add_argument("--only", default="", help="regular expression on the cells' directory names")
  ap.add_argument("--out", default="", help="JSON output file")
  ap.add_argument("--md", default="", help="markdown table output file")
  a = ap.parse_args(argv)
  os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  if not os.path.isdir(a.workdir):
    sys.exit(f"--workdir={a.workdir}: no such directory")
  grid = [c for c in cells(a.workdir) if re.search(a.only, os.path.basename(c[2]))]
  if not grid:
    sys.exit(f"--workdir={a.workdir}: no cells t<teacher>_s<student>/ (a scaling workdir?)")
  rows = []
  for teacher, student, cell in grid:
    seed_dir = os.path.join(cell, f"seed{a.seed}")
    if not os.path.isdir(seed_dir):
      print(f"[generalization] {cell}: no seed{a.seed}/, skipped", flush=True)
      continue
    rows.append(evaluate_cell(teacher, student, seed_dir, a.stage, a.seed, a.questions,
                              a.variant))
  md = markdown(rows)
  print(md)
  if a.md:
    with open(a.md, "w") as fh:
      fh.write(md)
  emit({"workdir": os.path.abspath(a.workdir), "seed": a.seed, "stage": a.stage,
        "questions": a.questions, "cells": rows}, a.out)


if __name__ == "__main__":
  main()
