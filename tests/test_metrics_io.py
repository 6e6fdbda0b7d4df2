"""Metrics: JSONL rows and TensorBoard event files (written without TensorFlow)."""

import glob
import json

import numpy as np
import pytest

from dgpo_jax.utils.progress import MetricsWriter
from dgpo_jax.utils.tensorboard import crc32c, read_scalars


def test_crc32c_known_vector():
  assert crc32c(b"123456789") == 0xE3069283


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
  m = MetricsWriter(str(tmp_path), "metrics_rl")
  m.write(1, em=0.5, kl=0.01, note="text is skipped in TensorBoard")
  m.write(2, em=0.75, kl=0.02)
  rows = [json.loads(l) for l in open(tmp_path / "metrics_rl.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and rows[1]["em"] == 0.75
  (path,) = glob.glob(str(tmp_path / "tensorboard" / "metrics_rl" / "events.out.tfevents.*"))
  got = read_scalars(path)
  assert (1, "em", 0.5) in got and (2, "em", 0.75) in got
  assert all(tag != "note" for _, tag, _ in got)


def test_bootstrap_intervals_and_verdicts():
  from dgpo_jax.eval import stats
  rng = np.random.default_rng(0)
  a = (rng.random((3, 400)) < 0.6).astype(float)
  b = (rng.random((3, 400)) < 0.3).astype(float)
  m, lo, hi = stats.paired_diff_ci(a, b)
  assert lo < m < hi and lo > 0.2 and abs(m - (a - b).mean()) < 1e-12
  assert stats.verdict(lo, hi, +1) == "reproduced"
  assert stats.verdict(lo, hi, -1) == "contradicted"
  m0, lo0, hi0 = stats.paired_diff_ci(a, a[:, ::-1])  # same rate: the interval holds 0
  assert lo0 <= 0 <= hi0 and stats.verdict(lo0, hi0) == "inconclusive"
  d, dlo, dhi = stats.mean_diff_ci(a[0], b[0])
  assert dlo < d < dhi
  with pytest.raises(ValueError, match="shapes"):
    stats.paired_diff_ci(a, b[:, :10])


def test_first_last_change_resamples_rollout_rows():
  from dgpo_jax.eval import stats
  # 20 RL steps of 16 rows: EM 0.625 on the first two, 0.469 on the last two.
  ems = [0.625, 0.625] + [0.5] * 16 + [0.5, 0.4375]
  by_steps = stats.first_last_change(ems)
  by_rows = stats.first_last_change(ems, rows=[16] * 20)
  assert by_rows["resampled"] == "rows" and by_steps["resampled"] == "step values"
  assert abs(by_rows["change"] - (0.46875 - 0.625)) < 1e-12
  assert abs(by_rows["change"] - by_steps["change"]) < 1e-12
  # 32 rows per side: the interval is wide and holds 0; two step values per side barely vary.
  lo, hi = by_rows["ci95"]
  assert lo < 0 < hi and hi - lo > 0.3
  assert by_steps["ci95"][1] - by_steps["ci95"][0] < 0.1
  with pytest.raises(ValueError, match="rows"):
    stats.first_last_change(ems, rows=[16] * 19)
