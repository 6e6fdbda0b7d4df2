"""Base-skill probes: items score exactly the copied names / read answers, and the accuracy
is the teacher-forced greedy match on those tokens."""

import pytest
import json

import numpy as np

from dgpo_jax.data import lm_data
from dgpo_jax.data import synthetic_world as SW
from dgpo_jax.eval import probe
from dgpo_jax.models.tokenizer import SentencePieceTokenizer

SMALL = dict(n_countries=6, n_cities=20, n_orgs=20, n_people=120, n_works=40)


def _world_and_tok(tmp_path):
  SW.write(SW.generate(0, **SMALL), str(tmp_path), seed=0)
  texts = [l.strip() for l in open(tmp_path / "pretrain.txt")]
  model = lm_data.train_sentencepiece(texts, str(tmp_path / "spm"), 512)
  return SentencePieceTokenizer(model, chat_format="plain")


def test_items_score_only_held_out_names_and_answers(tmp_path):
  tok = _world_and_tok(tmp_path)
  its = probe.items(str(tmp_path), tok, n=12)
  held = [json.loads(l) for s in ("dev", "test") for l in open(tmp_path / f"{s}.jsonl")]
  answers = {q["golden_answers"][0] for q in held if q["family"] == "single_hop"}
  assert len(its["copy"]) == 12 and its["reading"]
  for ids, mask in its["copy"]:
    text = tok.decode(ids)
    first, again = text.split(". Again:")
    scored = tok.decode([i for i, m in zip(ids, mask) if m])
    # The scored tokens are the names of the second list, without its commas.
    assert scored.split() == again.replace(",", " ").replace(".", " ").split()
    assert first.startswith("Names:")
  for ids, mask in its["reading"]:
    scored = tok.decode([i for i, m in zip(ids, mask) if m]).strip()
    assert scored in answers and tok.decode(ids).count("Doc ") == 3


@pytest.mark.slow
def test_accuracy_matches_a_manual_count(tmp_path, tiny_model):
  tok = _world_and_tok(tmp_path)
  its = probe.items(str(tmp_path), tok, n=5)
  cfg, (gd, params) = tiny_model(vocab_size=tok.vocab_size)
  got = probe.accuracy(gd, params, its, tok.pad_id, batch_size=4)
  from flax import nnx
  model = nnx.merge(gd, params)
  width = max(len(ids) for name in ("copy", "reading") for ids, _ in its[name])
  # one padded width: the model is causal, so a position's logits ignore the padding after it
  forward = nnx.jit(lambda m, x: m(x)[0])
  for name in ("copy", "reading"):
    hits = total = 0
    for ids, mask in its[name]:
      row = np.full((1, width), tok.pad_id, np.int32)
      row[0, :len(ids)] = ids
      pred = np.asarray(forward(model, row)[0]).argmax(-1)
      for t in range(1, len(ids)):
        if mask[t]:
          hits += int(pred[t - 1] == ids[t])
          total += 1
    assert abs(got[name] - hits / total) < 1e-9
    assert 0.0 <= got[f"{name}_exact"] <= 1.0


def test_restated_gold_facts_tells_lucky_guesses_from_read_answers():
  qs = [{"family": "comparison", "hops": [["A", "A was born in the year 1900."],
                                          ["B", "B was born in the year 1950."]]},
        {"family": "comparison", "hops": [["A", "A was born in the year 1900."],
                                          ["C", "C was born in the year 1800."]]},
        {"family": "single_hop", "hops": [["D", "D was born in Hupa."]]}]
  texts = ["<think> A was born in the year 1900. B was born in the year 1950. </think>",
           "<think> A was born in the year 1777. C was born in the year 1800. </think>",
           "<think> D was born in Hupa. </think>"]
  got = probe.restated_gold_facts(texts, qs, [1.0, 1.0, 0.0])
  assert got["comparison"] == {"n": 2, "correct": 2, "correct_restating": 1}
  assert got["single_hop"] == {"n": 1, "correct": 0, "correct_restating": 0}
