"""Ask one question and print the agentic trajectory readably.

  python -m dgpo_jax.ask --config=configs/smollm2.py --question="Who was Evan Morris?"

Greedy decoding by default (as the reference validates); --sample uses the config's
temperature/top_p. Prints each turn (thinking, queries, retrieved titles) and the answer.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("question", None, "The question.", required=True)
flags.DEFINE_string("workdir", "/tmp/dgpo_ask",
                    "Run directory. For configs/synthetic.py: the workdir `main` prepared.")
flags.DEFINE_string("model", "teacher",
                    "configs/synthetic.py only: a model the run exported under WORKDIR/models "
                    "(teacher, student, student_final-dgpo, ...) or an HF directory.")
flags.DEFINE_string("checkpoint", "", "An HF directory to talk to (e.g. a trained student "
                    "exported by `main`); overrides --model.")
flags.DEFINE_bool("sample", False, "Sample instead of greedy decoding.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
FLAGS = flags.FLAGS


def render(tok, traj) -> str:
  out = [f"Question: {traj.question}"]
  q_i = 0
  for t in traj.turns:
    seg = tok.decode(traj.response_ids[t["start"]:t["end"]])
    if t["kind"] == "generate":
      out.append(f"\n[model · {t['action']}]\n{seg.strip()}")
    else:
      if q_i < len(traj.queries) and "<information>" in seg:
        out.append(f"\n[search] {traj.queries[q_i]!r} →")
        for i, title in enumerate(traj.doc_titles[q_i]):
          out.append(f"   {i + 1}. {title}")
        q_i += 1
      else:
        out.append(f"\n[environment]\n{seg.strip()}")
  out.append(f"\nAnswer: {traj.answer!r}   (searches: {traj.num_searches}, "
             f"flags: {traj.flags or 'none'})")
  return "\n".join(out)


def main(argv):
  from dgpo_jax.utils import cli
  traj, tok = cli.run(_ask, argv, FLAGS.config)
  print(render(tok, traj))


def _ask(c):
  import os

  import jax

  from dgpo_jax.models.sampler import SamplingParams
  from dgpo_jax.pipeline import setup
  from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine
  from dgpo_jax.utils.errors import fail
  if "world" in c:  # the synthetic world: models and index live in the workdir
    model = FLAGS.checkpoint or FLAGS.model
    path = model if os.path.isdir(model) else os.path.join(FLAGS.workdir, "models", model)
    if not os.path.isdir(path):
      fail(f"{path} does not exist: run `python -m dgpo_jax.main "
           f"--config=configs/synthetic.py --workdir={FLAGS.workdir}` first")
    with c.unlocked():
      c.model.init, c.model.name, c.tokenizer.kind = "pretrained", path, "model"
      c.retrieval.index = os.path.join(FLAGS.workdir, "world", "index_bm25")
      c.retrieval.encoder = "bm25"
  model, _ = setup.build_model(c, FLAGS.workdir)
  retriever = setup.build_retriever(c)
  engine = RolloutEngine.for_model(model.graphdef, model.params, model.tokenizer, retriever,
                                   RolloutConfig.from_config(c), [FLAGS.question])
  sp = (SamplingParams(temperature=c.rollout.temperature, top_p=c.rollout.top_p)
        if FLAGS.sample else SamplingParams(greedy=True))
  (traj,) = engine.run([FLAGS.question], jax.random.key(FLAGS.seed), sp)
  return traj, model.tokenizer


if __name__ == "__main__":
  app.run(main)
