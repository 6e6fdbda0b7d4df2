"""Paired EM differences, with 95% bootstrap intervals, between a workdir's test evaluations.

  python -m dgpo_jax.compare --workdir=workdirs/synthetic \
      --pairs=student_final-dgpo:student_final-sft_ppo,student_final-dgpo:student_base

--workdir: a `main` run's workdir (its eval/test_<label>.json) or a directory of such files.
--pairs: A:B labels (default: every pair). Writes --out.json and --out.md (default
WORKDIR/compare) and prints the table.
"""

from absl import app, flags

flags.DEFINE_string("workdir", None, "A run's workdir, or a directory of test_*.json files.")
flags.DEFINE_list("pairs", [], "A:B label pairs; default every pair.")
flags.DEFINE_string("out", "", "Output path without extension (default WORKDIR/compare).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  from dgpo_jax.eval import compare
  from dgpo_jax.utils import cli
  cli.run(compare.run, argv, FLAGS.workdir, FLAGS.pairs, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
