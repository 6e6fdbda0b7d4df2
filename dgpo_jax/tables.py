"""The paper's tables on the synthetic world: every method and ablation over several seeds.

  python -m dgpo_jax.tables --config=configs/synthetic.py:tables --workdir=workdirs/tables

Runs dgpo, ppo, sft_ppo, kd, distillm, taid, gkd, grpo and the five ablations of dgpo for
each seed, sharing one preparation and TGO (see dgpo_jax/pipeline/tables.py), then writes
tables.md (main, ablation and ARCap tables, mean ± std over seeds), tables.json and
curves.png in the workdir. Rerun the same command to resume. `--against=OTHER` adds how each
run's EM and each claim's verdict differ from another tables workdir's (e.g. the same runs at
other budgets). docs/results.md reports a run.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/synthetic.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_list("runs", [], "Only these runs (method or method-ablation); default all.")
flags.DEFINE_string("against", "", "Another tables workdir on the same world, seeds and test "
                    "questions (e.g. other budgets): each run's paired EM difference and both "
                    "sides' verdicts, in tables.md and tables.json.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _run():
  import os

  from dgpo_jax.utils import cli
  cli.add_xla_flags(FLAGS.config.get("xla_flags", ""))
  # 39 runs compile the same steps: XLA's persistent cache turns most compiles into loads.
  cli.compilation_cache(os.path.join(FLAGS.workdir, "xla_cache"))
  from dgpo_jax.pipeline import tables
  from dgpo_jax.utils.errors import fail
  if not all(s.lstrip("-").isdigit() for s in FLAGS.seeds):
    fail(f"--seeds={','.join(FLAGS.seeds)}: expected integers")
  runs = tables.MAIN + tables.ABLATIONS
  if FLAGS.runs:
    known = {tables.tag(m, a): (m, a) for m, a in runs}
    bad = [r for r in FLAGS.runs if r not in known]
    if bad:
      fail(f"--runs: unknown {bad} (known: {', '.join(known)})")
    runs = tuple(known[r] for r in FLAGS.runs)
  tables.run(FLAGS.config, FLAGS.workdir, [int(s) for s in FLAGS.seeds], runs, FLAGS.against)


def main(argv):
  from dgpo_jax.utils import cli
  cli.run(_run, argv)

if __name__ == "__main__":
  app.run(main)
