"""KD sanity check: a student of the teacher's own shape, KD'd on the teacher's TGO, should
come close to the teacher (issue "Students that learn", item 2).

    python -m benchmarks.kd_sanity --workdir=/tmp/kd_sanity [--set=seed=1 ...]
        [--out=benchmarks/results/kd_sanity_cpu.json]

1. `main --config=configs/synthetic.py --config.method=kd` in WORKDIR/default (or reuses a
   finished one there): preparation, TGO, KD of the configured student, test EM.
2. WORKDIR/same_shape starts from the same world, tokenizer, teacher and TGO, with a student
   of the teacher's shape pretrained by the student's own recipe (LM steps, seed), then the
   same KD stage and test evaluation.
Prints JSON: both runs' test EM, the ratios to the teacher, and the wall times.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks.common import emit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = ("world", "tokenizer", "models/teacher", "checkpoints/teacher_lm",
          "checkpoints/teacher_sft", "eval/teacher_sft_val.json", "tgo")


def _main(workdir, sets):
  cmd = [sys.executable, "-m", "dgpo_jax.main", "--config=configs/synthetic.py",
         f"--workdir={workdir}", "--config.method=kd", *[f"--config.{s}" for s in sets]]
  print("[kd_sanity] " + " ".join(cmd[2:]), flush=True)
  t0 = time.time()
  subprocess.run(cmd, cwd=ROOT, check=True)
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f), round(time.time() - t0, 1)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--set", action="append", default=[], help="a config override, k=v")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  sys.path.insert(0, ROOT)
  from configs import synthetic
  t = synthetic.get_config().teacher
  default = os.path.join(a.workdir, "default")
  base, wall_base = _main(default, a.set)
  same = os.path.join(a.workdir, "same_shape")
  for rel in SHARED:
    s, d = os.path.join(default, rel), os.path.join(same, rel)
    if os.path.exists(s) and not os.path.exists(d):
      os.makedirs(os.path.dirname(d), exist_ok=True)
      (shutil.copytree if os.path.isdir(s) else shutil.copy)(s, d)
  shape = [f"student.{k}={t[k]}" for k in ("d_model", "n_layers", "n_heads", "n_kv_heads",
                                           "d_ff")]
  res, wall_same = _main(same, a.set + shape)
  em = lambda r, k: r["test"][k]["em"]
  teacher = em(base, "teacher")
  out = {"benchmark": "kd_sanity", "overrides": a.set, "teacher_test_em": teacher,
         "student_kd_test_em": em(base, "student_kd"),
         "same_shape_student_kd_test_em": em(res, "student_kd"),
         "same_shape_teacher_test_em": em(res, "teacher"),
         "ratio_student": em(base, "student_kd") / max(teacher, 1e-9),
         "ratio_same_shape": em(res, "student_kd") / max(teacher, 1e-9),
         "target_ratio_same_shape": 0.8,
         "wall_s": {"default": wall_base, "same_shape": wall_same}}
  emit(out, a.out)


if __name__ == "__main__":
  main()
