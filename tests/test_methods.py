"""The baselines run end to end on the smoke world (in-process, one short stage each),
sharing the preparation and TGO of one workdir."""

import json
import os

import pytest

from conftest import needs_shared


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("methods"))


def _config(method, ablation=""):
  from configs import synthetic
  c = synthetic.get_config("smoke")
  c.method, c.ablation = method, ablation
  c.ppo.steps = 1
  c.kd.epochs = 1
  c.eval.update(num_questions=4, val_questions=4, rl_val_questions=4)
  return c


@needs_shared
@pytest.mark.parametrize("method,ablation,stages", [
    ("grpo", "", {"rl": "rl-grpo"}),
    ("gkd", "", {"rl": "rl-gkd"}),
    ("taid", "", {"kd": "kd-taid-lam1-all"}),
    ("dgpo", "inverted", {"rl": "rl-dgpo-inverted",
                          "kd": "kd-ce_fkl-lam1-all-after-rl-dgpo-inverted"}),
])
def test_method_runs(workdir, method, ablation, stages):
  from dgpo_jax.pipeline import train
  res = train.run(_config(method, ablation), workdir)
  assert res["stages"] == stages
  assert 0.0 <= res["test"]["student_final"]["avg"] <= 1.0
  if "rl" in stages:
    rows = [json.loads(l) for l in open(os.path.join(workdir, f"metrics_{stages['rl']}.jsonl"))]
    assert rows[-1]["step"] == 1 and rows[-1]["skipped"] == 0.0
    if method == "grpo":  # no critic: no value metrics
      assert "vf_loss" not in rows[-1] and rows[-1]["pg_loss"] == rows[-1]["pg_loss"]
    if method == "gkd":
      assert rows[-1]["divergence"] >= 0.0
