"""A whole on-policy stage in-process: `rl_stage.run_rl` with a scripted policy (the real
cache machinery, scripted turns), a trainable tiny student and a tiny teacher. Checks the
rows each step passes (and that `plan` lowers the same arguments), the metrics, the
checkpoints and an exact resume."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from test_rollout import FakeRetriever, ScriptedSampler, tok  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def assert_plan_matches(config, mesh, rules, student, teacher, calls):
  """Every recorded step call has, leaf for leaf, the shapes, dtypes and partition specs of
  the arguments `plan` lowers for that step (`aot.planned_steps`) at the call's width."""
  from dgpo_jax.pipeline import aot
  from dgpo_jax.train.step import Model, abstract, signature
  ab = lambda m: Model(m.cfg, m.graphdef, abstract(m.params, m.shardings), m.shardings)
  planned = {s.name: s for s, _ in aot.planned_steps(config, mesh, rules, ab(student),
                                                     ab(teacher), config.plan.seq_len)}
  assert calls
  for name, sig in calls:
    name = "kd_update" if name.startswith("kd-") else name  # KD's fit names it by its stage
    batch = sig[3] if name == "ppo_experience" else sig[1]
    kw = {"loss_tokens": batch["loss_idx"][0][1]} if "loss_idx" in batch else {}
    assert signature(planned[name].spec(batch["tokens"][0][1], **kw)) == sig, name


def _setup(tok, tmp_path, method="dgpo"):
  from configs import synthetic
  from dgpo_jax.models import config as C
  from dgpo_jax.models.decoder import Decoder
  from dgpo_jax.parallel import sharding
  from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine
  from dgpo_jax.train.step import Model
  c = synthetic.get_config("smoke")
  c.method = method
  c.ppo.update(steps=3, questions_per_step=4, mini_batch=2, val_every=0)
  c.train.update(ckpt_every=1, log_every=1)
  c.lock()
  mesh = sharding.make_mesh("data:1", devices=jax.devices()[:1])
  cfg = C.preset("tiny-llama", vocab_size=tok.vocab_size)
  models = []
  for seed in (0, 1):  # student, teacher
    gd, params, sh = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)), mesh, ())
    models.append(Model(cfg, gd, params, sh))
  # rows 0 and 1 answer right, rows 2 and 3 wrong, every step
  scripts = {i: [f"<think> ok </think><answer> {a} </answer>"]
             for i, a in enumerate(["Paris", "Paris", "London", "Rome"])}
  rc = RolloutConfig(max_turns=2, max_turn_tokens=32, max_obs_tokens=64)
  engine = RolloutEngine(ScriptedSampler(tok, scripts), tok, FakeRetriever(), rc)
  train_q = [{"question": f"capital of france {i}", "golden_answers": ["Paris"]}
             for i in range(4)]
  return c, mesh, models, engine, train_q, rc


def _run(c, wd, mesh, models, engine, train_q, rc, tok):
  from dgpo_jax.pipeline.rl_stage import run_rl
  student, teacher = models
  return run_rl("rl-test", c, str(wd), student, teacher, (tok, FakeRetriever(), rc), train_q,
                mesh, (), lambda m: None, engine=engine, kl_rows="wrong")


def test_rl_stage_with_a_scripted_policy_trains_checkpoints_and_resumes(tok, tmp_path):
  from dgpo_jax.train.step import recording
  c, mesh, models, engine, train_q, rc = _setup(tok, tmp_path)
  wd = tmp_path / "a"
  with recording() as calls:
    params, last = _run(c, wd, mesh, models, engine, train_q, rc, tok)
  rows = [json.loads(l) for l in open(wd / "metrics_rl-test.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(r["em"] == 0.5 and r["rows"] == 4 and r["searches_per_question"] == 0
             for r in rows)
  # k1 (log-ratio) estimates may be negative; the full KL to the teacher is not
  assert all(r["kl_full"] > 0 and r["kl"] != 0 and r["skipped"] == 0 for r in rows)
  # each step: the experience pass on all 4 rows, then 2 updates of 2 rows; and `plan`'s
  # steps for this config take exactly these arguments
  names = [n for n, _ in calls]
  assert names == ["ppo_experience", "ppo_update", "ppo_update"] * 3
  assert calls[0][1][3]["tokens"][0][0] == 4 and calls[1][1][1]["tokens"][0][0] == 2
  assert_plan_matches(c, mesh, (), *models, calls)
  before = jax.tree.leaves(models[0].params)
  assert any(not np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(params)))
  assert sorted(os.listdir(wd / "checkpoints" / "rl-test"))[-1].endswith("3")
  # a finished run returns its checkpoint without stepping
  again, m = _run(c, wd, mesh, models, engine, train_q, rc, tok)
  assert m == {} and all(np.array_equal(a, b) for a, b in
                         zip(jax.tree.leaves(params), jax.tree.leaves(again)))
  # drop the last checkpoint: step 3 is redone, identically
  import shutil
  ck = wd / "checkpoints" / "rl-test"
  shutil.rmtree(ck / sorted(os.listdir(ck))[-1])
  redone, _ = _run(c, wd, mesh, models, engine, train_q, rc, tok)
  assert all(np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(params), jax.tree.leaves(redone)))


def test_gkd_stage_with_a_scripted_policy(tok, tmp_path):
  """GKD's on-policy JSD update on the same scripted rollouts: one update of all 4 rows per
  step, with the arguments `plan` lowers."""
  from dgpo_jax.pipeline.rl_stage import run_rl
  from dgpo_jax.train.step import recording
  c, mesh, models, engine, train_q, rc = _setup(tok, tmp_path, method="gkd")
  wd = tmp_path / "g"
  with recording() as calls:
    params, _ = run_rl("rl-gkd", c, str(wd), *models, (tok, FakeRetriever(), rc), train_q, mesh,
                       (), lambda m: None, mode="gkd", engine=engine)
  assert [n for n, _ in calls] == ["gkd_update"] * 3
  assert calls[0][1][1]["tokens"][0][0] == 4
  assert_plan_matches(c, mesh, (), *models, calls)
  rows = [json.loads(l) for l in open(wd / "metrics_rl-gkd.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(r["divergence"] > 0 and r["em"] == 0.5 and r["skipped"] == 0 for r in rows)
  before = jax.tree.leaves(models[0].params)
  assert any(not np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(params)))
