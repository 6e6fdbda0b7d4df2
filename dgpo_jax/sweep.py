"""Emits the points of a scaling sweep (student × teacher × method × seed) as commands.

  python -m dgpo_jax.sweep --students=qwen2.5-0.5b,qwen2.5-1.5b --teachers=qwen2.5-3b,qwen2.5-7b \
      --methods=ppo,kd,dgpo --seeds=0,1,2 --workdir_root=/ckpt/sweep [--plan]

One line per point: the `main` command (or, with --plan, the `plan` command that checks it
fits first). Points where the student is not smaller than the teacher are skipped.
"""

import sys

from absl import app, flags

flags.DEFINE_list("students", ["qwen2.5-0.5b"], "Student presets.")
flags.DEFINE_list("teachers", ["qwen2.5-3b"], "Teacher presets.")
flags.DEFINE_list("methods", ["dgpo"], "Methods (dgpo, ppo, kd, ...).")
flags.DEFINE_list("seeds", ["0"], "Seeds.")
flags.DEFINE_string("workdir_root", "/ckpt/sweep", "Workdirs are <root>/<point>.")
flags.DEFINE_boolean("plan", False, "Emit `dgpo_jax.plan` commands instead of training.")
FLAGS = flags.FLAGS


def points(students, teachers, methods, seeds):
  """[(name, variant)] for the sweep; the teacher must be larger than the student."""
  from dgpo_jax.models.config import preset
  from dgpo_jax.pipeline.stages import METHODS
  out = []
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"unknown method {m!r} (known: {', '.join(METHODS)})")
  for s in students:
    for t in teachers:
      if preset(s).num_params() >= preset(t).num_params():
        continue
      for m in methods:
        for seed in seeds:
          out.append((f"{s}--{t}--{m}--seed{seed}",
                      f"student={s},teacher={t},method={m},seed={seed}"))
  return out


def main(argv):
  del argv
  try:
    pts = points(FLAGS.students, FLAGS.teachers, FLAGS.methods, FLAGS.seeds)
  except Exception as e:  # unknown preset or method: one line, status 2
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for name, variant in pts:
    if FLAGS.plan:
      print(f"python -m dgpo_jax.plan --config=configs/sweep.py:{variant}")
    else:
      print(f"python -m dgpo_jax.main --config=configs/sweep.py:{variant} "
            f"--workdir={FLAGS.workdir_root}/{name}")


if __name__ == "__main__":
  app.run(main)
