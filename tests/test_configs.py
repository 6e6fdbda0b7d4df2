"""Paper-scale configs: reference hyperparameters, and the ahead-of-time plan compiles their
KD and PPO steps from abstract shapes (real 0.5B student and 3B teacher shapes, no weights)
on 8 fake CPU devices."""

import jax
import pytest

from configs import llama8b_to_1b, qwen05b, qwen7b_to_05b
from dgpo_jax import plan as plan_cli
from dgpo_jax.pipeline import aot
from dgpo_jax.utils.errors import DgpoError


def test_paper_configs_have_reference_hyperparameters():
  for mod, presets in ((qwen05b, ("qwen2.5-0.5b", "qwen2.5-3b")),
                       (qwen7b_to_05b, ("qwen2.5-0.5b", "qwen2.5-7b")),
                       (llama8b_to_1b, ("llama-3.2-1b", "llama-3.1-8b"))):
    c = mod.get_config()
    assert (c.model.preset, c.teacher_model.preset) == presets
    assert (c.ppo.questions_per_step, c.ppo.mini_batch, c.ppo.steps) == (512, 256, 1000)
    assert (c.ppo.beta, c.kd.lam, c.ppo.kl_estimator, c.ppo.kl_rows) == (0.001, 1.0, "k1",
                                                                         "wrong")
    assert (c.ppo.actor_lr, c.ppo.critic_lr, c.ppo.gamma, c.ppo.lam) == (1e-6, 1e-5, 1.0, 1.0)
    assert (c.rollout.max_turns, c.retrieval.topk, c.retrieval.encoder) == (4, 3, "e5-base-v2")


@pytest.mark.slow
def test_plan_compiles_qwen05b_steps_and_checks_fit():
  assert len(jax.devices()) == 8
  c = qwen05b.get_config("plan_small")
  p = plan_cli.make_plan(c, "fsdp:8")
  assert set(p["steps"]) == {"kd_update", "ppo_experience", "ppo_update", "rollout_decode"}
  # the rollout segment's arguments hold this device's share of the whole KV cache
  assert p["steps"]["rollout_decode"]["argument_gb"] >= p["per_device_gb"]["rollout_kv_cache"]
  assert all(s["tflops_per_step_per_device"] > 0 for s in p["steps"].values())
  # fsdp over 8 devices: each holds about an eighth of the f32 0.5B student (494M params)
  gb = p["per_device_gb"]["student_params"]
  assert 494e6 * 4 / 8 / 1024 ** 3 * 0.95 < gb < 494e6 * 4 / 8 / 1024 ** 3 * 1.3
  # the PPO update's arguments: actor + critic params and their Adam moments
  assert p["steps"]["ppo_update"]["argument_gb"] > 5 * gb
  assert plan_cli.check_fit(p, 80.0)[0]
  fits, msg = plan_cli.check_fit(p, 0.5)
  assert not fits and "DOES NOT FIT" in msg


def test_plan_of_the_synthetic_config_uses_its_student_and_teacher_shapes():
  """The embedded default has no model presets: its shapes are `student`/`teacher` at the
  configured vocabulary (`aot.model_cfgs`)."""
  from configs import synthetic
  c = synthetic.get_config("smoke")
  p = plan_cli.make_plan(c, "data:4,tensor:2", 256)
  assert set(p["steps"]) == {"kd_update", "ppo_experience", "ppo_update", "rollout_decode"}
  # tensor:2 shards each weight matrix in two; data:4 replicates: a device holds about half
  # of the student's f32 params (d 32, 1 layer, d_ff 64, 512 pieces: ~29k)
  s_cfg, t_cfg = aot.model_cfgs(c)
  assert (s_cfg.d_model, s_cfg.vocab_size, t_cfg.d_model) == (32, 512, 64)
  n = p["per_device_gb"]["student_params"] * 1024 ** 3 / 4
  assert 10e3 < n < 20e3


def test_plan_rejects_bad_meshes_and_batches():
  c = qwen05b.get_config("plan_small")
  with pytest.raises(DgpoError, match="device"):
    plan_cli.make_plan(c, "data:3")
  c.ppo.mini_batch = 12
  with pytest.raises(DgpoError, match="ppo.mini_batch=12"):
    plan_cli.make_plan(c, "fsdp:8")


def test_sweep_points_and_configs():
  from configs import sweep
  from dgpo_jax import sweep as sweep_cli
  pts = sweep_cli.points(["qwen2.5-0.5b", "qwen2.5-3b"], ["qwen2.5-3b", "qwen2.5-7b"],
                         ["ppo", "dgpo"], ["0", "1"])
  # 0.5b→3b, 0.5b→7b, 3b→7b (3b→3b skipped) × 2 methods × 2 seeds
  assert len(pts) == 12
  c = sweep.get_config(pts[0][1])
  assert (c.model.preset, c.teacher_model.preset, c.method, c.seed) == (
      "qwen2.5-0.5b", "qwen2.5-3b", "ppo", 0)
  with pytest.raises(ValueError, match="bad point item"):
    sweep.get_config("studnet=x")
  with pytest.raises(ValueError, match="unknown method"):
    sweep_cli.points(["qwen2.5-0.5b"], ["qwen2.5-3b"], ["dpo"], ["0"])


def test_kd_weight_decay_reaches_the_kd_optimizer():
  import jax.numpy as jnp
  from configs import synthetic
  from dgpo_jax.pipeline import steps
  from dgpo_jax.train import loop
  c = synthetic.get_config()
  assert c.kd.weight_decay == 0.0  # the default: plain Adam, as every recorded KD run
  with c.unlocked():
    c.kd.weight_decay = 0.1
  fc = steps.kd_fit_config(c, steps_per_epoch=10, epochs=1)
  assert fc.weight_decay == 0.1
  tx = loop.optimizer(fc)
  params = {"w": jnp.ones((3,))}
  state = tx.init(params)
  for _ in range(c.kd.warmup_steps + 1):  # past warmup, a zero gradient still shrinks w
    upd, state = tx.update({"w": jnp.zeros((3,))}, state, params)
  assert float(upd["w"][0]) < 0.0
