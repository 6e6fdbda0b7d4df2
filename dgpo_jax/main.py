"""Training entry point: flags and dispatch only.

  python -m dgpo_jax.main --config=configs/synthetic.py[:variant] --workdir=DIR \
      [--config.train.steps=50 ...]

Rerunning the same command resumes from the last checkpoint in DIR.
"""

import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, reports).")
flags.DEFINE_string("coordinator_address", "", "Multi-process: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", 0, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", -1, "Multi-process: this process's index.")
flags.DEFINE_string("xla_cache", None, "XLA's persistent compilation cache directory; '' turns "
                    "it off. Default: $JAX_COMPILATION_CACHE_DIR, else $DGPO_JAX_CACHE/xla "
                    "(~/.cache/dgpo_jax/xla).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

STAGES = ("train", "prepare", "lm", "generate")


def main(argv):
  from dgpo_jax.utils import cli
  cli.add_xla_flags(FLAGS.config.get("xla_flags", ""))
  cli.run(_run, argv, FLAGS.config, FLAGS.workdir)


def _run(config, workdir):
  from dgpo_jax.utils import cli
  from dgpo_jax.utils.errors import DgpoError
  if config.stage not in STAGES:
    raise DgpoError(f"config.stage={config.stage!r}: expected one of {', '.join(STAGES)}")
  cli.compilation_cache(cli.default_xla_cache() if FLAGS.xla_cache is None else FLAGS.xla_cache)
  from dgpo_jax.parallel import distributed
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  distributed.check_same_config(config)
  cli.makedirs(workdir)
  if distributed.jax.process_index() == 0:
    cli.write_json(os.path.join(workdir, "config.json"), config.to_dict(), indent=2)
  from dgpo_jax.utils import preemption
  try:
    _dispatch(config, workdir)
  except preemption.Preempted:
    distributed.shutdown()  # every process stops after the same step
    raise
  distributed.shutdown()


def _dispatch(config, workdir):
  if config.stage == "train":
    from dgpo_jax.pipeline import method
    method.run(config, workdir)
  elif config.stage == "prepare":
    from dgpo_jax.pipeline import prepare
    prepare.run(config, workdir)
  else:
    from dgpo_jax.pipeline import lm_stage
    lm_stage.run(config, workdir)


if __name__ == "__main__":
  app.run(main)
