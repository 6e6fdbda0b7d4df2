import collections
import json

import numpy as np

from dgpo_jax.data import synthetic_world as SW
from dgpo_jax.data.corpus import iter_corpus
from dgpo_jax.retrieval import index as index_lib
from dgpo_jax.retrieval.retriever import IndexRetriever

SMALL = dict(n_countries=8, n_cities=40, n_orgs=40, n_people=200, n_works=80)


def test_generation_is_seeded_and_files_use_real_formats(tmp_path):
  a, b = SW.generate(3, **SMALL), SW.generate(3, **SMALL)
  assert a.passages() == b.passages()
  assert SW.generate(4, **SMALL).passages() != a.passages()
  counts = SW.write(a, str(tmp_path), seed=3)
  ps = list(iter_corpus(str(tmp_path / "corpus.jsonl")))
  assert len(ps) == counts["passages"] == 8 + 40 + 40 + 200 + 80
  assert ps[0].title.startswith('"') and ps[0].title.endswith('"')
  rows = [json.loads(l) for l in open(tmp_path / "test.jsonl")]
  assert rows and {"id", "question", "golden_answers", "family", "gold_ids"} <= set(rows[0])
  assert set(q["family"] for q in rows) <= set(SW.FAMILIES)


def test_splits_have_disjoint_subjects_and_held_out_text(tmp_path):
  w = SW.generate(0, **SMALL)
  SW.write(w, str(tmp_path), seed=0)
  splits = {s: [json.loads(l) for l in open(tmp_path / f"{s}.jsonl")] for s in
            ("train", "dev", "test")}
  subj = {s: {q["subject"].split("/")[0] for q in qs} for s, qs in splits.items()}
  assert not subj["train"] & subj["dev"] and not subj["train"] & subj["test"]
  assert not subj["dev"] & subj["test"]
  fams = collections.Counter(q["family"] for q in splits["train"])
  assert all(fams[f] > 0 for f in SW.FAMILIES)
  pretrain = open(tmp_path / "pretrain.txt").read()
  drills = open(tmp_path / "drills.jsonl").read()
  text = {p[0]: p[2] for p in w.passages()}
  held = [text[e] for e in subj["test"]]
  # A held-out subject's own passage is neither in the pretraining text nor in the drills.
  assert held and not any(t in pretrain or json.dumps(t)[1:-1] in drills for t in held)
  kept = [text[e] for e in subj["train"]]
  assert all(t in pretrain for t in kept[:50])


def test_oracle_facts_are_passage_sentences_and_drills_restate_them(tmp_path):
  w = SW.generate(0, **SMALL)
  SW.write(w, str(tmp_path), seed=0)
  text = {p[0]: p[2] for p in w.passages()}
  for q in [json.loads(l) for l in open(tmp_path / "train.jsonl")][:100]:
    for (_, fact), gold in zip(q["hops"], q["gold_ids"]):
      assert fact in text[gold]  # reading = finding and copying a sentence
  d = json.loads(open(tmp_path / "drills.jsonl").readline())["text"]
  block, fact = d.rsplit("\n", 1)
  assert block.count("(Title: ") == 3 and fact in block


def test_oracle_reaches_the_answer_and_bm25_finds_gold_passages(tmp_path):
  w = SW.generate(0, **SMALL)
  SW.write(w, str(tmp_path), seed=0)
  index_lib.build(str(tmp_path / "corpus.jsonl"), str(tmp_path / "idx"), "bm25")
  r = IndexRetriever(str(tmp_path / "idx"))
  qs = [json.loads(l) for l in open(tmp_path / "train.jsonl")][:200]
  hits = []
  for q in qs:
    steps = SW.oracle_steps(q)
    assert steps[-1] == ("answer", steps[-1][1], q["golden_answers"][0])
    for (kind, _, query), gold in zip(steps, q["gold_ids"]):
      assert kind == "search"
      hits.append(gold in [d.id for d in r.retrieve([query], 3)[0]])
  assert np.mean(hits) > 0.9  # searching the oracle's query finds the gold passage


def test_renaming_gives_each_named_entity_a_fresh_name_everywhere():
  w = SW.generate(0, **SMALL)
  qs = SW.questions(w, 0)
  taken = {word for _, title, _ in w.passages() for word in title.split()}
  rng = np.random.default_rng(0)
  for fam in SW.FAMILIES:
    q = next(x for x in qs if x["family"] == fam)
    names = SW.renaming(q, rng, taken)
    # the subject (both people of a comparison) and nothing the question does not name
    assert set(names) == {n for n, _ in q["hops"] if n in q["question"]}
    assert len(names) == (2 if fam == "comparison" else 1)
    for old, new in names.items():
      assert len(new.split()) == len(old.split())
      assert all(a == b if a in SW.KEPT_WORDS else b not in taken
                 for a, b in zip(old.split(), new.split()))
    steps = SW.oracle_steps(q)
    text = SW.rename(q["question"] + " ".join(t + " " + p for _, t, p in steps), names)
    assert not any(old in text for old in names) and all(new in text for new in names.values())
  # whole words only: a name inside a longer word stays
  assert SW.rename("Ann and Anna met Ann.", {"Ann": "Bo"}) == "Bo and Anna met Bo."
  assert SW.rename("x", {}) == "x"
