"""benchmarks.rl_budget: a run's RL figures from its results and metrics rows."""

import pytest

from benchmarks import rl_budget


def _rows(ems, val_every=5):
  rows = []
  for i, em in enumerate(ems, 1):
    r = {"step": i, "time": 100.0 + 10 * i, "step_time_s": 10.0, "em": em, "rows": 16.0,
         "entropy": 0.1 if i <= len(ems) // 2 else 0.05}
    if i % val_every == 0:
      r["val_em"] = 0.5
    rows.append(r)
  return rows


def test_summary_takes_first_and_last_tenth_and_the_stage_minutes():
  results = {"test": {"student_kd": {"em": 0.61234}, "student_final": {"em": 0.625}}}
  got = rl_budget.summarize(results, _rows([0.25] * 10 + [0.75] * 10))
  c = got["training_em_first_last_10pct"]
  assert (c["first"], c["last"], c["n_each"], c["steps"]) == (0.25, 0.75, 2, 20)
  assert c["ci95"][0] > 0  # 32 rows each side: a half-point jump is outside the noise
  assert got["val_em"] == {"5": 0.5, "10": 0.5, "15": 0.5, "20": 0.5}
  assert got["entropy_first_last_10pct"] == [0.1, 0.05]
  assert got["rl_minutes"] == pytest.approx((300 - 110 + 10) / 60, abs=0.01)
  assert got["test_em"] == {"student_kd": 0.6123, "student_final": 0.625}


def test_metrics_without_training_steps_are_refused():
  with pytest.raises(SystemExit, match="no training steps"):
    rl_budget.summarize({"test": {}}, [{"step": 1, "val_em": 0.5}])


def test_an_unknown_run_is_named(monkeypatch):
  monkeypatch.setattr("sys.argv", ["rl_budget", "--workdir=/nonexistent", "--runs=dgpo,grpo"])
  with pytest.raises(SystemExit, match="unknown runs.*grpo"):
    rl_budget.main()
