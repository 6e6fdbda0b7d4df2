"""The tables command's aggregation: mean ± std over seeds, markdown, curves."""

import json

import pytest

from dgpo_jax.pipeline import tables


def _res(em, hit):  # test figures in the evaluator's schema (eval/evaluate.py)
  fam = {"single_hop": em, "bridge": em / 2, "comparison": 0.0, "three_hop": 0.0}
  row = dict(em=em, em_by_family=fam, arcap={"hit_ratio_first": hit, "thinking_em": None})
  return {"test": {"student_final": row, "teacher": row, "student_base": row}}


def test_aggregate_markdown_and_curves(tmp_path):
  runs = (("dgpo", ""), ("ppo", ""), ("dgpo", "uniform_kl"))
  results = {(s, m, a): _res(0.1 * (s + 1) if m == "dgpo" else 0.2, 0.5)
             for s in (0, 1) for m, a in runs}
  t = tables.aggregate(results, [0, 1], runs)
  d = t["runs"]["dgpo"]["em"]
  assert d["mean"] == pytest.approx(0.15) and d["std"] == pytest.approx(0.05) and d["n"] == 2
  assert t["runs"]["ppo"]["em"]["std"] == 0.0
  assert t["runs"]["dgpo"]["arcap"]["thinking_em"] is None  # missing stays missing
  md = tables.markdown(t)
  assert "| dgpo | 0.150 ± 0.050 | 0.075 ± 0.025 |" in md
  assert "### Ablations" in md and "| dgpo-uniform_kl |" in md and "### ARCap" in md
  f = tmp_path / "m.jsonl"
  f.write_text("".join(json.dumps({"step": i, "em": 0.1 * i, "kl": 0.01, "entropy": 1.0,
                                   "token_reward_sum": 0.0}) + "\n" for i in (1, 2, 3)))
  rows = [json.loads(l) for l in open(f)]
  rl = tables.rl_first_last({"dgpo": [rows, rows[:2]]})
  assert rl["dgpo"]["kl"] == [0.01, 0.01] and rl["dgpo"]["entropy"] == [1.0, 1.0]
  assert all(x != x for x in rl["dgpo"]["answered"])  # never logged: NaN, not 0
  t["rl"] = rl
  assert "| dgpo | 0.010 → 0.010 |" in tables.markdown(t)
  pytest.importorskip("matplotlib")
  assert tables.plot_curves({"dgpo": [rows]}, str(tmp_path / "c.png"))
  # a run with no KL or reward (GKD) keeps every other run's color in every panel
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(tables.CURVES))
  gkd = [{"step": r["step"], "em": 0.0, "entropy": 2.0} for r in rows]
  tables.draw_curves(axes, {"gkd": [gkd], "dgpo": [rows]})
  colors = [{l.get_label(): l.get_color() for l in ax.get_lines()} for ax in axes]
  assert all(c["dgpo"] == colors[0]["dgpo"] != colors[0]["gkd"] for c in colors)
  plt.close(fig)
  assert (tmp_path / "c.png").stat().st_size > 1000


def test_claims_pair_questions_and_give_verdicts():
  def res(scores):
    return {"test": {"student_final": {"em": sum(scores) / len(scores),
                                       "em_per_question": scores}}}
  good, bad = [1.0] * 60 + [0.0] * 40, [1.0] * 20 + [0.0] * 80
  results = {}
  for s in (0, 1, 2):
    results[(s, "dgpo", "")] = res(good)
    results[(s, "kd", "")] = res(bad)  # DGPO beats KD: reproduced
    results[(s, "ppo", "")] = res(good)  # DGPO vs PPO: identical, inconclusive
    results[(s, "grpo", "")] = res(good)
  cl = {c["claim"]: c for c in tables.claims(results, [0, 1, 2])}
  assert cl["DGPO beats KD"]["verdict"] == "reproduced"
  assert cl["DGPO beats KD"]["diff"] == pytest.approx(0.4)
  assert cl["DGPO beats PPO"]["verdict"] == "inconclusive"
  assert cl["KD beats PPO"]["verdict"] == "contradicted"
  assert "DGPO beats TAID" not in cl  # a run that did not happen is not judged
  md = tables.markdown({"seeds": [0, 1, 2], "runs": {}, "reference": {},
                        "claims": list(cl.values())})
  assert "| DGPO beats KD | dgpo | kd | +0.400 |" in md and "reproduced" in md


def test_against_another_workdir_pairs_runs_and_verdicts(tmp_path):
  """`--against`: each run's EM here − there over the same seeds and questions, and each
  claim's verdict on both sides; runs missing there are left out; another test set fails."""
  def res(scores):
    return {"test": {"student_final": {"em": sum(scores) / len(scores),
                                       "em_per_question": scores}}}
  good, bad = [1.0] * 60 + [0.0] * 40, [1.0] * 20 + [0.0] * 80
  here, runs = {}, (("dgpo", ""), ("kd", ""), ("ppo", ""))
  for s in (0, 1):
    here[(s, "dgpo", "")], here[(s, "kd", "")], here[(s, "ppo", "")] = res(good), res(bad), \
        res(bad)
    for m, scores in (("dgpo", bad), ("kd", bad)):  # there: dgpo no better than kd; no ppo
      f = tmp_path / "other" / "runs" / f"seed{s}" / f"{m}.json"
      f.parent.mkdir(parents=True, exist_ok=True)
      f.write_text(json.dumps(res(scores)))
  ag = tables.against_workdir(here, str(tmp_path / "other"), [0, 1], runs)
  assert set(ag["runs"]) == {"dgpo", "kd"}
  assert ag["runs"]["dgpo"]["diff"] == pytest.approx(0.4) and ag["runs"]["kd"]["diff"] == 0
  assert ag["runs"]["dgpo"]["here"] == pytest.approx(0.6)
  assert ag["runs"]["dgpo"]["there"] == pytest.approx(0.2)
  (c,) = [c for c in ag["claims"] if c["claim"] == "DGPO beats KD"]
  assert c["here"][1] == "reproduced" and c["there"][1] == "inconclusive"
  md = tables.against_markdown(ag)
  assert "| dgpo | 0.600 | 0.200 | +0.400 |" in md and "| DGPO beats KD | +0.400 |" in md
  short = {k: res(v["test"]["student_final"]["em_per_question"][:50]) for k, v in here.items()}
  with pytest.raises(Exception, match="not the same test set"):
    tables.against_workdir(short, str(tmp_path / "other"), [0, 1], runs)
  with pytest.raises(Exception, match="no finished run there"):
    tables.against_workdir(here, str(tmp_path / "none"), [0, 1], runs)
  (tmp_path / "other" / "runs" / "seed1" / "kd.json").write_text("{trunc")
  with pytest.raises(Exception, match=r"seed1/kd.json is not a readable run result"):
    tables.against_workdir(here, str(tmp_path / "other"), [0, 1], runs)
