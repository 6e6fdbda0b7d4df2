"""Confidence intervals for EM comparisons: paired differences bootstrapped over seeds and
questions, and a verdict against the direction a claim predicts."""

import numpy as np


def paired_diff_ci(a_sq, b_sq, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
  """Mean of a − b and its bootstrap interval.

  Args:
    a_sq, b_sq: per-question scores [S, Q] (S seeds, Q questions, the same questions in the
      same order for both), or [Q].
  Each bootstrap draw resamples seeds, then questions within the draw (a two-level
  bootstrap), keeping the pairing of a and b.

  Returns:
    (mean difference, low, high).
  """
  a, b = np.atleast_2d(np.asarray(a_sq, np.float64)), np.atleast_2d(np.asarray(b_sq, np.float64))
  if a.shape != b.shape:
    raise ValueError(f"paired_diff_ci: shapes {a.shape} and {b.shape} differ (the same "
                     f"questions and seeds are needed on both sides)")
  d = a - b
  s, q = d.shape
  rng = np.random.default_rng(seed)
  si = rng.integers(s, size=(n_boot, s))
  qi = rng.integers(q, size=(n_boot, q))
  draws = d[si[:, :, None], qi[:, None, :]].mean(axis=(1, 2))
  lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
  return float(d.mean()), float(lo), float(hi)


def mean_diff_ci(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
  """Mean of a minus mean of b for two independent samples, with a bootstrap interval."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if not len(a) or not len(b):
    raise ValueError("mean_diff_ci: both samples need at least one value")
  rng = np.random.default_rng(seed)
  draws = (a[rng.integers(len(a), size=(n_boot, len(a)))].mean(1)
           - b[rng.integers(len(b), size=(n_boot, len(b)))].mean(1))
  lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
  return float(a.mean() - b.mean()), float(lo), float(hi)


def verdict(lo: float, hi: float, predicted_sign: int = 1) -> str:
  """'reproduced' when the interval excludes 0 on the predicted side, 'contradicted' when it
  excludes 0 on the other, else 'inconclusive'."""
  if lo <= 0 <= hi:
    return "inconclusive"
  return "reproduced" if (lo > 0) == (predicted_sign > 0) else "contradicted"


def first_last_change(values, frac: float = 0.1, rows=None, **kw):
  """Mean of the last `frac` of a series minus the mean of its first `frac` (at least one
  value each), with `mean_diff_ci`'s interval: e.g. the training-rollout EM of every RL
  step, so a stage that moved the policy shows an interval that excludes 0.

  rows: the number of rollout rows behind each value (values are then EMs, k/rows): the
  interval resamples those rows' 0/1 outcomes, not the few step means (two steps each side
  at 20 RL steps, whose resampled mean has almost no spread). None resamples the values.
  """
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    raise ValueError(f"first_last_change: a series of {len(v)} values has no first and last part")
  k = max(1, int(round(len(v) * frac)))
  if rows is None:
    a, b = v[-k:], v[:k]
  else:
    n = np.asarray(rows, np.int64)
    if n.shape != v.shape or (n < 1).any():
      raise ValueError(f"first_last_change: rows {n.tolist()} do not match {len(v)} values")
    outcomes = lambda sl: np.concatenate([
        np.repeat([1.0, 0.0], [int(round(e * m)), m - int(round(e * m))])
        for e, m in zip(v[sl], n[sl])])
    a, b = outcomes(slice(len(v) - k, len(v))), outcomes(slice(0, k))
  d, lo, hi = mean_diff_ci(a, b, **kw)
  return {"first": float(b.mean()), "last": float(a.mean()), "change": d,
          "ci95": [lo, hi], "n_each": k,
          "resampled": "rows" if rows is not None else "step values"}
