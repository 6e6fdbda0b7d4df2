"""Paper-scale configs compile from abstract shapes (no weights) on 8 fake CPU devices."""

import jax

from configs import qwen05b
from dgpo_jax.pipeline import aot


def test_qwen05b_has_reference_hyperparameters():
  c = qwen05b.get_config()
  assert (c.ppo.questions_per_step, c.ppo.mini_batch, c.ppo.steps) == (512, 256, 1000)
  assert (c.ppo.beta, c.kd.lam, c.ppo.kl_estimator, c.ppo.kl_rows) == (0.001, 1.0, "k1", "wrong")
  assert (c.ppo.actor_lr, c.ppo.critic_lr, c.ppo.gamma, c.ppo.lam) == (1e-6, 1e-5, 1.0, 1.0)
  assert (c.rollout.max_turns, c.retrieval.topk, c.retrieval.encoder) == (4, 3, "e5-base-v2")
  assert (c.model.preset, c.teacher_model.preset) == ("qwen2.5-0.5b", "qwen2.5-3b")


def test_qwen05b_steps_compile_from_abstract_shapes():
  assert len(jax.devices()) == 8
  c = qwen05b.get_config("plan_small")
  out = {x.name: x for x in aot.compile_steps(c)}
  assert set(out) == {"kd_update", "ppo_experience", "ppo_update"}
  for x in out.values():
    assert x.flops() > 0
  # fsdp over 8 devices: each holds an eighth of the f32 student (+ the frozen bf16 teacher)
  student_bytes = 494_032_768 * 4
  assert out["ppo_update"].memory()["argument_bytes"] < student_bytes
