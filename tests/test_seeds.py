"""World seed vs training seed: another training seed on a prepared world gets its own KD and
RL stages; a run asking a workdir for another world is refused, not silently served the
prepared one."""

import json

import pytest

from configs import synthetic
from dgpo_jax.pipeline import method, prepare
from dgpo_jax.utils.errors import DgpoError


def _config(**over):
  c = synthetic.get_config("smoke")
  with c.unlocked():
    for k, v in over.items():
      sec, _, name = k.rpartition(".")
      (c[sec] if sec else c)[name] = v
  return c


def test_world_seed_defaults_to_the_run_seed():
  assert prepare.world_seed(_config(seed=3)) == 3
  assert prepare.world_seed(_config(**{"seed": 3, "world.seed": 0})) == 0


def test_stage_names_carry_a_training_seed_other_than_the_worlds():
  assert method.seed_suffix(_config(seed=2)) == ""
  assert method.rl_name(_config(seed=2)) == "rl-dgpo"
  c = _config(**{"seed": 2, "world.seed": 0, "method": "dgpo", "ablation": "uniform_kl"})
  assert method.seed_suffix(c) == "-s2"
  assert method.rl_name(c) == "rl-dgpo-uniform_kl-s2"


def test_a_workdir_refuses_a_run_that_asks_for_another_world(tmp_path):
  d = prepare.build_world(_config(seed=0), str(tmp_path))
  assert json.load(open(f"{d}/meta.json"))["seed"] == 0
  assert prepare.build_world(_config(**{"seed": 1, "world.seed": 0}), str(tmp_path)) == d
  with pytest.raises(DgpoError, match=r"holds the world of seed 0.*world.seed=0"):
    prepare.build_world(_config(seed=1), str(tmp_path))
