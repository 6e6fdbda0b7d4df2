"""`benchmarks.gpu_step --dry`: the GPU throughput script runs every part on CPU at tiny
shapes (decode against its roofline, the Tunix peer when its site directory is given, the
whole DGPO step of `benchmarks.rl_step` with every phase, the projection). Its figures mean
nothing here; the real ones need a GPU (docs/benchmarks.md)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_step_dry_runs_every_part(tmp_path):
  out = tmp_path / "gpu_step.json"
  site = os.environ.get("DGPO_TUNIX_SITE", "")  # optional: see benchmarks/gpu_step.py
  r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_step", "--dry", f"--out={out}",
                      f"--tunix_site={site}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(out))
  ours = res["decode"]["ours"]
  for b in ("b2", "b4"):
    assert ours[b]["decode_tokens_per_s"] > ours[b]["tokens_per_s_incl_prefill"] > 0, b
    assert 0 < ours[b]["share_of_roofline"], b
  if site:
    assert res["decode"]["tunix"]["b4"]["tokens_per_s_incl_prefill"] > 0
  else:
    assert res["decode"]["tunix"].startswith("absent")
  step = res["step"]
  assert step["rows"] == 2, step.get("failed")
  phases = step["phases"]
  assert set(phases) == {"prefill", "decode", "retrieval", "append", "experience", "update"}
  assert abs(sum(p["share_of_step"] for p in phases.values()) - 1) < 1e-3
  for name, p in phases.items():
    assert p["seconds"] > 0, name
    if name != "retrieval":
      assert p["roofline_s"] > 0 and p["tokens_per_s"] > 0, name
  decoded = phases["decode"]["tokens_per_s"] * phases["decode"]["seconds"]
  assert decoded == pytest.approx(2 * 2 * 8, rel=0.01)  # rows × turns × turn_tokens
  proj = res["projection"]
  assert proj["kind"].startswith("projection") and proj["hours"] > 0
  assert proj["hours"] == pytest.approx(step["step_s"] * 1000 / 3600, rel=0.01)
