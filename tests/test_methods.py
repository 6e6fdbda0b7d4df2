"""The baselines run end to end on the smoke world, in-process on 8 fake devices, sharing
the smoke run's preparation and TGO; each step they call takes exactly the arguments
`plan` lowers for it (GRPO rolls out 8 rows and updates on mini-batches of 4; TAID is a
non-default KD loss; GKD is in tests/test_rl_stage.py). A batch that does not divide the
mesh is refused."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, cpu_env, copy_prepared, needs_shared
from test_rl_stage import assert_plan_matches

pytestmark = pytest.mark.slow


def _config(**over):
  from configs import synthetic
  c = synthetic.get_config("smoke")
  # 4-way data parallel (the smoke batches of 4 divide) and 2-way tensor parallel
  c.mesh = "data:4,tensor:2"
  c.ppo.update(steps=1)
  c.kd.update(epochs=1)
  c.eval.update(num_questions=4, val_questions=4, rl_val_questions=4, arcap_thinking=False)
  for k, v in over.items():
    c[k] = v
  c.lock()
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, smoke_run):
  """Starts from the smoke run's preparation and TGO (the same config and seed would redo
  them identically)."""
  wd = tmp_path_factory.mktemp("methods")
  copy_prepared(smoke_run, wd)
  return wd


@needs_shared
@pytest.mark.parametrize("method,stages,steps", [
    ("grpo", {"rl": "rl-grpo"}, ["ppo_experience", "ppo_update", "ppo_update"]),
    ("taid", {"kd": "kd-taid-lam1-all-16q-t0"}, ["kd_update"] * 4),
])
def test_method_runs(workdir, method, stages, steps):
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import method as method_lib
  from dgpo_jax.train.step import recording
  config = _config(method=method)
  with recording() as calls:
    res = method_lib.run(config, str(workdir))
  assert res["stages"] == stages and res["method"] == method
  assert 0.0 <= res["test"]["student_final"]["em"] <= 1.0
  assert ["kd_update" if n.startswith("kd-") else n for n, _ in calls] == steps
  if method == "grpo":  # every question's group of 2 in the experience pass, 4 per update
    assert calls[0][1][3]["tokens"][0][0] == 8 and calls[1][1][1]["tokens"][0][0] == 4
  _, student, teacher, *_ = method_lib.setup_run(config, str(workdir))
  assert_plan_matches(config, sharding.make_mesh(config.mesh),
                      method_lib.prepare.setup.rules(config), student, teacher, calls)
  if "rl" in stages:
    rows = [json.loads(l) for l in open(workdir / f"metrics_{stages['rl']}.jsonl")]
    assert rows[-1]["step"] == 1 and rows[-1]["skipped"] == 0.0
    if method == "grpo":  # no critic: no value metrics
      assert "vf_loss" not in rows[-1] and "pg_loss" in rows[-1]


@needs_shared
def test_batches_must_divide_the_mesh(tmp_path):
  env = cpu_env(8)
  r = subprocess.run([sys.executable, "-m", "dgpo_jax.main", "--config=configs/synthetic.py:smoke",
                      f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=ROOT,
                     env=env, timeout=600)
  assert r.returncode == 2  # smoke batches of 4 rows over 8 data-parallel devices
  assert "does not divide over the 8 data-parallel devices" in r.stderr
