"""Scaling studies on the synthetic world: student size × teacher size × method × seed.

  python -m dgpo_jax.scaling --config=configs/synthetic.py:scaling --workdir=workdirs/scaling

Runs the grid of `config.scaling` (teachers, students, methods, seeds) cell by cell, sharing
the world, each teacher and each pretrained student across cells (dgpo_jax/pipeline/scaling.py),
each teacher's cells in a process of their own when `config.scaling.workers` > 1 (their logs
in workdir/logs), then writes scaling.json, scaling.md and scaling.png in the workdir. Rerun
the same command to resume. `configs/synthetic.py:scaling_smoke` runs the same code on a tiny grid.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/synthetic.py:scaling).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _run():
  from dgpo_jax.utils import cli
  cli.add_xla_flags(FLAGS.config.get("xla_flags", ""))
  # as `main`: $JAX_COMPILATION_CACHE_DIR or the user cache, so cells of shapes that other
  # runs compiled load their programs
  cli.compilation_cache(cli.default_xla_cache())
  from dgpo_jax.pipeline import scaling
  scaling.run(FLAGS.config, FLAGS.workdir)


def main(argv):
  from dgpo_jax.utils import cli
  cli.run(_run, argv)


if __name__ == "__main__":
  app.run(main)
