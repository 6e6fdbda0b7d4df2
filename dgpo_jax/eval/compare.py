"""Paired comparisons of the test evaluations one workdir holds.

Every `eval/test_<label>.json` a `main` run writes (the base student, the teacher, each
method's KD and final students) scores the same test questions in the same order, so two of
them compare question by question: the EM difference with `stats.paired_diff_ci`'s
bootstrap interval. With one seed this resamples questions only; `tables` does seeds too.
"""

import glob
import itertools
import json
import os

from dgpo_jax.eval import stats
from dgpo_jax.utils import cli
from dgpo_jax.utils.errors import fail


def load(eval_dir: str) -> dict:
  """{label: per-question EM list} of every `test_<label>.json` in `eval_dir`."""
  out = {}
  for f in sorted(glob.glob(os.path.join(eval_dir, "test_*.json"))):
    try:
      with open(f) as fh:
        d = json.load(fh)
    except (OSError, ValueError) as e:
      fail(f"{f}: not a readable evaluation ({e})")
    if "em_per_question" not in d:
      fail(f"{f}: no 'em_per_question' field (an evaluation written before it was kept?)")
    out[os.path.basename(f)[len("test_"):-len(".json")]] = d["em_per_question"]
  return out


def compare(per_question: dict, pairs=None, n_boot: int = 2000) -> list:
  """Rows {a, b, n, em_a, em_b, diff, lo, hi} for `pairs` [(a, b)] (default: every pair of
  labels). Raises DgpoError for an unknown label or a pair scored on different questions."""
  pairs = pairs or list(itertools.combinations(sorted(per_question), 2))
  rows = []
  for a, b in pairs:
    for x in (a, b):
      if x not in per_question:
        fail(f"compare: no evaluation {x!r} (have: {', '.join(sorted(per_question))})")
    qa, qb = per_question[a], per_question[b]
    if len(qa) != len(qb):
      fail(f"compare: {a} has {len(qa)} questions and {b} {len(qb)}; not paired")
    diff, lo, hi = stats.paired_diff_ci(qa, qb, n_boot=n_boot)
    rows.append({"a": a, "b": b, "n": len(qa), "em_a": sum(qa) / len(qa),
                 "em_b": sum(qb) / len(qb), "diff": diff, "lo": lo, "hi": hi})
  return rows


def markdown(rows: list) -> str:
  lines = ["| a | b | questions | EM a | EM b | a − b | 95% CI |", "|---|---|---|---|---|---|---|"]
  lines += [f"| {r['a']} | {r['b']} | {r['n']} | {r['em_a']:.3f} | {r['em_b']:.3f} | "
            f"{r['diff']:+.3f} | [{r['lo']:+.3f}, {r['hi']:+.3f}] |" for r in rows]
  return "\n".join(lines) + "\n"


def run(workdir: str, pairs: list, out: str) -> list:
  """Compares a run's `eval/test_*.json` (or a directory of them), writes `out`.json/.md."""
  eval_dir = os.path.join(workdir, "eval") if os.path.isdir(os.path.join(workdir, "eval")) \
      else workdir
  per_question = load(eval_dir)
  if len(per_question) < 2:
    fail(f"{eval_dir}: {len(per_question)} test evaluations; two are needed to compare")
  parsed = []
  for p in pairs:
    if ":" not in p:
      fail(f"--pairs {p!r}: expected A:B (labels as in test_<label>.json)")
    parsed.append(tuple(p.split(":", 1)))
  rows = compare(per_question, parsed)
  out = out or os.path.join(workdir, "compare")
  cli.write_json(out + ".json", rows, indent=2)
  with open(out + ".md", "w") as f:
    f.write(markdown(rows))
  print(markdown(rows), end="")
  return rows
