"""Orbax train-state checkpoints: keep-N, restore onto another mesh, corrupted newest."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from dgpo_jax.models import config as C
from dgpo_jax.models.decoder import Decoder
from dgpo_jax.parallel import sharding as S
from dgpo_jax.train import lm
from dgpo_jax.utils.checkpoint import Checkpointer, abstract_like


def _state(mesh_spec):
  cfg = C.preset("tiny-qwen2")
  mesh = S.make_mesh(mesh_spec)
  g, params, psh = S.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
  tx = lm.make_optimizer(1e-3, 10)
  shape = jax.eval_shape(lambda p: lm.init_state(p, tx), params)
  ssh = lm.state_shardings(tx, shape, psh, mesh)
  state = jax.jit(lambda p: lm.init_state(p, tx), out_shardings=ssh)(params)
  return state, shape, ssh


def test_save_keep_n_and_restore_on_a_different_mesh(tmp_path):
  state, _, _ = _state("fsdp:8")
  ck = Checkpointer(str(tmp_path / "ck"), keep=2)
  for step in (1, 2, 3):
    ck.save(step, state, {"data_step": step, "rng": [1, 2]})
  assert ck.all_steps() == [2, 3]
  _, shape2, ssh2 = _state("data:2,tensor:4")
  step, restored, meta = ck.restore(abstract_like(shape2, ssh2))
  assert step == 3 and meta == {"data_step": 3, "rng": [1, 2]}
  wq = restored["params"]["blocks"]["wq"]
  assert wq.sharding == ssh2["params"]["blocks"]["wq"]
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)


def test_corrupted_newest_falls_back_with_warning(tmp_path, capsys):
  state, shape, ssh = _state("data:8")
  ck = Checkpointer(str(tmp_path / "ck"), keep=3)
  ck.save(1, state, {"data_step": 1})
  ck.save(2, state, {"data_step": 2})
  # Truncate every data file of step 2 (as a crash or a bad disk would).
  for root, _, files in os.walk(tmp_path / "ck" / "2" / "state"):
    for f in files:
      if not f.endswith(".json"):
        open(os.path.join(root, f), "wb").close()
  step, _, meta = ck.restore(abstract_like(shape, ssh))
  assert step == 1 and meta["data_step"] == 1
  err = capsys.readouterr().err
  assert "WARNING" in err and "moved aside as corrupt-2-" in err
  assert ck.all_steps() == [1]
  ck.save(2, state, {"data_step": 2})  # the step can be saved again
  assert ck.restore(abstract_like(shape, ssh))[0] == 2


def test_no_checkpoint_returns_none(tmp_path):
  _, shape, ssh = _state("data:8")
  assert Checkpointer(str(tmp_path / "empty")).restore(abstract_like(shape, ssh)) is None
