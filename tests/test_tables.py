"""The tables command's aggregation: mean ± std over seeds, markdown, curves."""

import json

import pytest

from dgpo_jax.pipeline import tables


def _res(avg, hit):
  fam = {"single_hop": avg, "bridge": avg / 2, "comparison": 0.0, "three_hop": 0.0}
  row = dict(fam, avg=avg, arcap={"hit_ratio_first": hit, "thinking_em": None})
  return {"test": {"student_final": row, "teacher": row, "student_base": row}}


def test_aggregate_markdown_and_curves(tmp_path):
  runs = (("dgpo", ""), ("ppo", ""), ("dgpo", "uniform_kl"))
  results = {(s, m, a): _res(0.1 * (s + 1) if m == "dgpo" else 0.2, 0.5)
             for s in (0, 1) for m, a in runs}
  t = tables.aggregate(results, [0, 1], runs)
  d = t["runs"]["dgpo"]["avg"]
  assert d["mean"] == pytest.approx(0.15) and d["std"] == pytest.approx(0.05) and d["n"] == 2
  assert t["runs"]["ppo"]["avg"]["std"] == 0.0
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
  assert (tmp_path / "c.png").stat().st_size > 1000
