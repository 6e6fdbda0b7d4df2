"""`benchmarks.rl_step` runs a whole DGPO step and reports every phase against its roofline
(tiny shapes here; the CPU figures at SmolLM2 shapes are in benchmarks/results/)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_rl_step_reports_every_phase(tmp_path):
  out = tmp_path / "rl_step.json"
  r = subprocess.run([sys.executable, "-m", "benchmarks.rl_step", "--preset=tiny-llama",
                      "--teacher=tiny-llama", "--questions=2", "--group=2", "--turns=2",
                      "--prompt_tokens=16", "--turn_tokens=8", "--obs_tokens=16",
                      "--mini_batch=2", "--micro_batches=1", "--docs=200", "--calibrate=512", f"--out={out}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(out))
  assert res["rows"] == 4
  phases = res["phases"]
  assert set(phases) == {"prefill", "decode", "retrieval", "append", "experience", "update"}
  assert abs(sum(p["share_of_step"] for p in phases.values()) - 1) < 1e-3
  for name, p in phases.items():
    assert p["seconds"] > 0, name
    if name != "retrieval":
      assert p["roofline_s"] > 0 and p["tokens_per_s"] > 0, name
  decoded = phases["decode"]["tokens_per_s"] * phases["decode"]["seconds"]
  assert decoded == pytest.approx(4 * 2 * 8, rel=0.01)  # rows × turns × turn_tokens
  assert res["largest_phase"] in phases
