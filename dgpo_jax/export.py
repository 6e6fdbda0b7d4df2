"""Export a checkpoint as a transformers-loadable directory.

  python -m dgpo_jax.export --config=configs/synthetic.py \
      --checkpoint=workdirs/synthetic/checkpoints/rl-dgpo --out=/tmp/dgpo_student

--checkpoint: an orbax stage directory of a run (needs --config: which model it is) or an HF
directory. Writes config.json, model.safetensors (sharded with an index when large),
generation_config.json, tokenizer files and the chat template; `ask --checkpoint=OUT`,
`evaluate --checkpoint=OUT` and transformers' AutoModelForCausalLM load it.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (needed for orbax checkpoints).",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "Orbax stage directory or HF directory.")
flags.DEFINE_string("out", None, "Output HF directory (replaced atomically).")
flags.mark_flags_as_required(["checkpoint", "out"])
FLAGS = flags.FLAGS


def main(argv):
  from dgpo_jax.utils import cli
  from dgpo_jax.pipeline import evaluate_stage
  cli.run(evaluate_stage.export, argv, FLAGS.config, FLAGS.checkpoint, FLAGS.out)

if __name__ == "__main__":
  app.run(main)
