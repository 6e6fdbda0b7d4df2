"""Training entry point: flags and dispatch only.

  python -m dgpo_jax.main --config=configs/synthetic.py[:variant] --workdir=DIR \
      [--config.train.steps=50 ...]

Rerunning the same command resumes from the last checkpoint in DIR.
"""

import json
import os
import sys

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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dgpo_jax.utils import cli
  cli.add_xla_flags(FLAGS.config.get("xla_flags", ""))
  cli.setup_logging()
  cli.compilation_cache(cli.default_xla_cache() if FLAGS.xla_cache is None else FLAGS.xla_cache)
  config = FLAGS.config
  from dgpo_jax.utils.errors import DgpoError
  try:
    from dgpo_jax.parallel import distributed
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    distributed.check_same_config(config)
    if config.stage not in STAGES:
      raise DgpoError(f"config.stage={config.stage!r}: expected one of {', '.join(STAGES)}")
    os.makedirs(FLAGS.workdir, exist_ok=True)
    if distributed.jax.process_index() == 0:
      with open(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2, default=str)
    if config.stage == "train":
      from dgpo_jax.pipeline import train
      train.run(config, FLAGS.workdir)
    elif config.stage == "prepare":
      from dgpo_jax.pipeline import prepare
      prepare.run(config, FLAGS.workdir)
    else:
      from dgpo_jax.pipeline import lm_stage
      lm_stage.run(config, FLAGS.workdir)
  except DgpoError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
