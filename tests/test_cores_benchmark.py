"""benchmarks.cores: workers start their timed loops together and report real rates."""

import pytest

from benchmarks import cores


def test_two_matmul_workers_each_report_a_positive_rate():
  got = cores._run("matmul", 2, 1, 1, 64)
  assert len(got) == 2
  assert all(r["gflops"] > 0 for r in got)


def test_a_worker_that_dies_before_timing_is_named(monkeypatch):
  with pytest.raises(SystemExit, match="worker nonsense"):
    cores._run("nonsense", 1, 1, 1, 64)
