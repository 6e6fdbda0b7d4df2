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
