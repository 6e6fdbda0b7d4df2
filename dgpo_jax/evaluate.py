"""Evaluate a checkpoint on QA files: EM (primary), F1 and ARCap per dataset.

  python -m dgpo_jax.evaluate --config=configs/synthetic.py \
      --checkpoint=workdirs/synthetic/models/student_final-dgpo \
      --data=workdirs/synthetic/world/test.jsonl --workdir=workdirs/eval_dgpo

--checkpoint: an HF directory (config.json + safetensors + tokenizer) or an orbax stage
directory of a run (WORKDIR/checkpoints/rl-dgpo); it must match the config's student or
teacher. --data: comma-separated `[name=]FILE` (FlashRAG .jsonl with golden_answers,
Search-R1 .parquet, or {"question", "answer"} .jsonl); default: the config's test set (for the
synthetic world, the run's world/test.jsonl). Greedy decoding. Writes results.json,
results.md and report.md in --workdir.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "HF directory or orbax stage directory.")
flags.DEFINE_list("data", [], "QA files, `[name=]path`, comma-separated.")
flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_string("corpus", "", "Corpus .jsonl to look up rows' gold_ids for ARCap Thinking "
                    "(default: the synthetic world's corpus, else config.data.corpus).")
flags.DEFINE_string("run_workdir", "", "The training run the checkpoint belongs to (its "
                    "tokenizer; the synthetic world's index and corpus), when the checkpoint "
                    "is not inside it.")
flags.DEFINE_integer("max_questions", 0, "Evaluate only the first N questions of each file.")
flags.DEFINE_bool("thinking", True, "Also run ARCap Thinking (gold passages in context).")
flags.mark_flags_as_required(["config", "checkpoint", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  from dgpo_jax.utils import cli
  from dgpo_jax.pipeline import evaluate_stage
  cli.run(evaluate_stage.run, argv, FLAGS.config, FLAGS.checkpoint, FLAGS.data, FLAGS.workdir,
          FLAGS.corpus, FLAGS.max_questions, FLAGS.thinking, FLAGS.run_workdir)

if __name__ == "__main__":
  app.run(main)
