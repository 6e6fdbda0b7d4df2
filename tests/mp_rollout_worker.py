"""One process of tests/test_multihost.py's rollout test: rolls out six scripted questions
with `RolloutEngine.run_sharded` and writes what this process retrieved and what it got back.

Usage: python tests/mp_rollout_worker.py OUT_JSON SPM_MODEL [COORDINATOR NUM_PROCESSES ID]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from dgpo_jax.models.tokenizer import SentencePieceTokenizer  # noqa: E402
from dgpo_jax.parallel import distributed  # noqa: E402
from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine  # noqa: E402
from test_rollout import FakeRetriever, ScriptedSampler  # noqa: E402

QUESTIONS = [f"question {i}" for i in range(6)]


def script(q):
  """Even questions search once (for the question's own words), odd ones answer at once."""
  i = int(q.split()[-1])
  if i % 2:
    return [f"<answer> answer {i} </answer>"]
  return [f"<search> query {i} </search>", f"<answer> found {i} </answer>"]


def main():
  out, spm = sys.argv[1], sys.argv[2]
  if len(sys.argv) > 3:
    distributed.initialize(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
  tok = SentencePieceTokenizer(spm, chat_format="plain")
  mine = QUESTIONS[distributed.process_share(len(QUESTIONS))]
  retriever = FakeRetriever()
  sampler = ScriptedSampler(tok, {r: script(q) for r, q in enumerate(mine)})
  engine = RolloutEngine(sampler, tok, retriever, RolloutConfig(max_turns=2, max_turn_tokens=32,
                                                                max_obs_tokens=120))
  trajs = engine.run_sharded(QUESTIONS, jax.random.key(0))
  with open(out, "w") as f:
    json.dump({"process": jax.process_index(), "retrieved": retriever.batches,
               "trajectories": [{"question": t.question, "answer": t.answer,
                                 "queries": t.queries, "doc_ids": t.doc_ids,
                                 "response_ids": t.response_ids, "loss_mask": t.loss_mask}
                                for t in trajs]}, f)


if __name__ == "__main__":
  main()
