"""benchmarks.kd_token_fit's statistics on hand-made distributions."""

import numpy as np

from benchmarks import kd_token_fit


def _logsoftmax(z):
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_a_student_missing_one_token_is_counted_and_named():
  v, t = 6, 5
  targets = np.array([[1, 2, 1, 3, 1]])
  w = np.array([[1, 1, 1, 1, 0]], np.float32)  # the last position is not generated
  zt = np.full((1, t, v), -4.0)
  np.put_along_axis(zt, targets[..., None], 4.0, -1)
  lt = _logsoftmax(zt)
  same = kd_token_fit._fit(lt, lt, targets, w, str)
  assert same["tokens"] == 4 and same["q_lt_1e-2"] == 0 and same["top_missed"] == []
  assert abs(same["skew_fkl"]) < 1e-6
  zs = zt.copy()
  zs[targets == 1] = 0.0
  zs[..., 1] = np.where(targets == 1, -20.0, zs[..., 1])  # confidently not token 1
  got = kd_token_fit._fit(_logsoftmax(zs), lt, targets, w, lambda i: f"p{i}")
  assert got["q_lt_1e-2"] == 0.5 and got["q_lt_1e-4"] == 0.5  # 2 of the 4 generated
  assert got["top_missed"] == [("p1", 2)]
  assert got["skew_at_cap"] == 0.5 and got["ce_share_q_lt_1e-2"] > 0.99
