"""The baselines run end to end on the smoke world (`main`, one short stage each), sharing
the smoke run's preparation and TGO; a batch that does not divide the mesh is refused."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, copy_prepared, needs_shared

SHORT = ("--config.ppo.steps=1", "--config.kd.epochs=1", "--config.eval.num_questions=4",
         "--config.eval.val_questions=4", "--config.eval.rl_val_questions=4")


def _main(workdir, *extra, devices=2):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, "-m", "dgpo_jax.main",
                         "--config=configs/synthetic.py:smoke", f"--workdir={workdir}", *SHORT,
                         *extra], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, smoke_run):
  """Starts from the smoke run's preparation and TGO (the same config and seed would redo
  them identically)."""
  wd = tmp_path_factory.mktemp("methods")
  copy_prepared(smoke_run, wd)
  return wd


@needs_shared
@pytest.mark.parametrize("method,ablation,stages", [
    ("grpo", "", {"rl": "rl-grpo"}),
    ("gkd", "", {"rl": "rl-gkd"}),
    ("taid", "", {"kd": "kd-taid-lam1-all-16q-t0"}),
])
def test_method_runs(workdir, method, ablation, stages):
  r = _main(workdir, f"--config.method={method}", f"--config.ablation={ablation}")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(workdir / "results.json"))
  assert res["stages"] == stages and res["method"] == method
  assert 0.0 <= res["test"]["student_final"]["avg"] <= 1.0
  if "rl" in stages:
    rows = [json.loads(l) for l in open(workdir / f"metrics_{stages['rl']}.jsonl")]
    assert rows[-1]["step"] == 1 and rows[-1]["skipped"] == 0.0
    if method == "grpo":  # no critic: no value metrics
      assert "vf_loss" not in rows[-1] and "pg_loss" in rows[-1]
    if method == "gkd":
      assert rows[-1]["divergence"] >= 0.0


@needs_shared
def test_batches_must_divide_the_mesh(tmp_path):
  r = _main(tmp_path, devices=8)  # smoke batches of 4 rows over 8 data-parallel devices
  assert r.returncode == 2
  assert "does not divide over the 8 data-parallel devices" in r.stderr
