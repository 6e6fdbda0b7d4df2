"""Evaluate, ARCap and export: unit figures on hand-made trajectories, and the CLIs on the
shared smoke run's checkpoints."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, cpu_env
from dgpo_jax.eval import arcap
from dgpo_jax.rollout.engine import Trajectory
from dgpo_jax.utils.errors import DgpoError


class CharTok:
  """Token id = code point: enough to decode observation blocks."""

  def decode(self, ids):
    return "".join(map(chr, ids))


def _traj(question, parts, answer, searches):
  """parts: [("generate"|"observation", text)]."""
  t = Trajectory(question, [])
  for kind, text in parts:
    start = len(t.response_ids)
    t.response_ids += [ord(c) for c in text]
    t.turns.append({"kind": kind, "start": start, "end": len(t.response_ids)})
  t.answer, t.num_searches = answer, searches
  return t


def test_contains_is_whole_token_after_normalization():
  assert arcap.contains("Born in The Hague, 1901.", ["the hague"])
  assert arcap.contains("Paris!", ["paris"])
  assert not arcap.contains("Parisian food", ["Paris"])
  assert not arcap.contains("anything", [""])


def test_query_and_source_figures():
  info = lambda s: f"\n\n<information>Doc 1(Title: x) {s}\n</information>\n\n"
  qs = [{"golden_answers": ["Visa"]}, {"golden_answers": ["Osdre"]}, {"golden_answers": ["Om"]}]
  trajs = [
      # first search misses, second hits, answered right
      _traj("a", [("generate", "s1"), ("observation", info("nothing")), ("generate", "s2"),
                  ("observation", info("born in Visa")), ("generate", "<answer>Visa</answer>")],
            "Visa", 2),
      # hit on the first search but a wrong answer that is not in the documents
      _traj("b", [("generate", "s"), ("observation", info("Osdre Works")),
                  ("generate", "x")], "Kalan", 1),
      # no search; an invalid-action message is an observation without documents
      _traj("c", [("generate", "?"), ("observation", "\nMy previous action is invalid.\n"),
                  ("generate", "<answer>Om</answer>")], "Om", 0),
  ]
  a = arcap.query_and_source(qs, trajs, CharTok())
  assert a["hit_ratio_first"] == 0.5  # a: miss, b: hit
  assert a["hit_ratio_all"] == pytest.approx(2 / 3)
  assert a["searches_per_question"] == 1.0 and a["searched_share"] == pytest.approx(2 / 3)
  assert a["em_given_gold_retrieved"] == 0.5 and a["gold_retrieved_share"] == pytest.approx(2 / 3)
  assert a["answer_in_retrieved_share"] == pytest.approx(1 / 3)  # Visa yes; Kalan, Om no


def test_gold_context_from_row_or_ids():
  passages = {"p1": ("T1", "text one"), "p2": ("T2", "text two")}
  assert arcap.gold_context({"gold_ids": ["p1", "p2"]}, passages) == [("T1", "text one"),
                                                                      ("T2", "text two")]
  assert arcap.gold_context({"gold_ids": ["p1", "p9"]}, passages) is None
  assert arcap.gold_context({"gold_passages": ["Title\nbody", {"title": "A", "text": "b"}]},
                            {}) == [("Title", "body"), ("A", "b")]
  assert arcap.gold_context({}, passages) is None


def _cli(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=ROOT, timeout=300,
                        env=cpu_env(1))


@pytest.mark.slow
def test_evaluate_and_export_the_smoke_run(smoke_run, tmp_path):
  from configs import synthetic
  from dgpo_jax.pipeline import evaluate_stage
  rows = [json.loads(l) for l in open(smoke_run / "world" / "test.jsonl")][:6]
  simple = tmp_path / "simple.jsonl"  # the {"question", "answer"} form, one row without one
  simple.write_text("".join(json.dumps({"question": r["question"],
                                        "answer": r["golden_answers"][0]}) + "\n"
                            for r in rows[:3]) + json.dumps({"question": "x?", "answer": []})
                    + "\n")
  flash = tmp_path / "flash.jsonl"
  flash.write_text("".join(json.dumps(r) + "\n" for r in rows))
  ckpt = smoke_run / "checkpoints" / "rl-dgpo"
  r = _cli("dgpo_jax.evaluate", "--config=configs/synthetic.py:smoke", f"--checkpoint={ckpt}",
           f"--data=synth={flash},{simple}", f"--workdir={tmp_path / 'ev'}")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(tmp_path / "ev" / "results.json"))
  assert set(res["datasets"]) == {"synth", "simple"}
  s, p = res["datasets"]["synth"], res["datasets"]["simple"]
  assert s["n"] == 6 and p["n"] == 3 and p["skipped_no_answer"] == 1
  assert 0 <= s["em"] <= s["f1"] <= 1 and set(s["em_by_family"]) <= {
      "single_hop", "bridge", "comparison", "three_hop"}
  assert s["arcap"]["thinking_n"] == 6 and s["arcap"]["thinking_em"] is not None
  assert p["arcap"]["thinking_em"] is None  # no gold passages in the simple form
  assert res["average"]["em"] == pytest.approx((s["em"] + p["em"]) / 2)
  assert "| synth | 6 |" in open(tmp_path / "ev" / "results.md").read()
  report = open(tmp_path / "ev" / "report.md").read()
  assert "ARCap" in report and "Sample trajectory" in report
  # Export the orbax checkpoint; evaluating the export gives the same answers.
  config = synthetic.get_config("smoke")
  out = tmp_path / "hf"
  evaluate_stage.export(config, str(ckpt), str(out))
  for f in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
            "chat_template.jinja", "generation_config.json"):
    assert (out / f).is_file(), f
  again = evaluate_stage.run(config, str(out), [f"synth={flash}"], str(tmp_path / "ev2"),
                             thinking=False, run_workdir=str(smoke_run))
  assert again["datasets"]["synth"]["em"] == s["em"]
  assert again["datasets"]["synth"]["f1"] == s["f1"]
  # A checkpoint of another model is refused before any rollout, naming what differs.
  full = synthetic.get_config("")
  with pytest.raises(DgpoError, match="does not match the config's models.*d_model"):
    evaluate_stage.load_checkpoint(full, str(out), None, ())
