"""RL pieces: KL estimators, selective rewards, GAE, GRPO, PPO update, NaN guard, plans."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dgpo_jax.models import config as model_config
from dgpo_jax.models.decoder import Decoder, ValueModel
from dgpo_jax.rl import algos, batch as B, ppo
from dgpo_jax.train import lm
from dgpo_jax.utils.errors import DgpoError


def test_kl_estimators():
  lp, lq = jnp.log(jnp.array([0.5, 0.2])), jnp.log(jnp.array([0.25, 0.4]))
  np.testing.assert_allclose(algos.kl_k1(lp, lq, None), lp - lq, rtol=1e-6)
  k3 = algos.kl_k3(lp, lq, None)
  r = jnp.exp(lq - lp)
  np.testing.assert_allclose(k3, r - 1 - jnp.log(r), rtol=1e-6)
  assert float(k3.min()) >= 0
  assert float(algos.kl_full(lp, lq, jnp.array([7.0, 8.0]))[1]) == 8.0


def test_selective_rewards_touch_wrong_rows_only():
  score = jnp.array([1.0, 0.0])
  last = jnp.array([[0, 0, 1, 0], [0, 1, 0, 0]], jnp.float32)
  gen = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.float32)
  kl = jnp.full((2, 4), 2.0)
  r = algos.token_rewards(score, last, kl, gen, 0.5, "wrong")
  np.testing.assert_allclose(r, [[0, 0, 1, 0], [-1, -1, 0, 0]])
  r = algos.token_rewards(score, last, kl, gen, 0.5, "all")
  np.testing.assert_allclose(r, [[-1, -1, 0, 0], [-1, -1, 0, 0]])
  np.testing.assert_allclose(algos.token_rewards(score, last, kl, gen, 0.5, "none"),
                             score[:, None] * last)


def _gae_loop(r, v, m, gamma, lam):
  """Plain GAE over the masked (generated) positions of one row."""
  idx = [t for t in range(len(r)) if m[t]]
  adv, acc, next_v = np.zeros(len(r)), 0.0, 0.0
  for t in reversed(idx):
    delta = r[t] + gamma * next_v - v[t]
    acc = delta + gamma * lam * acc
    adv[t], next_v = acc, v[t]
  return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8)])
def test_gae_skips_observation_tokens(gamma, lam):
  rng = np.random.default_rng(0)
  r, v = rng.normal(size=(3, 9)), rng.normal(size=(3, 9))
  m = (rng.random((3, 9)) > 0.3).astype(np.float32)
  adv, ret = algos.gae(jnp.asarray(r * m), jnp.asarray(v), jnp.asarray(m), gamma, lam)
  for b in range(3):
    np.testing.assert_allclose(adv[b], _gae_loop(r[b] * m[b], v[b], m[b], gamma, lam),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, (np.asarray(adv) + v) * m, rtol=1e-5, atol=1e-6)


def test_grpo_group_normalization():
  score = jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
  group = jnp.array([0, 0, 0, 1, 1, 1])
  adv = algos.grpo_advantages(score, group, jnp.ones((6, 2)), 2)[:, 0]
  for g in (slice(0, 3), slice(3, 6)):
    assert abs(float(adv[g].mean())) < 1e-5
  assert float(adv[0]) > 0 > float(adv[1]) and float(adv[3]) < 0 < float(adv[4])


def test_policy_loss_clips():
  lp = jnp.log(jnp.array([[0.9, 0.1]]))
  old = jnp.log(jnp.array([[0.3, 0.3]]))
  loss, m = algos.policy_loss(lp, old, jnp.ones((1, 2)), jnp.ones((1, 2)), 0.2)
  # ratio 3 (clipped to 1.2) and 1/3: -(1.2 + 1/3)/2
  np.testing.assert_allclose(loss, -(1.2 + 1 / 3) / 2, rtol=1e-5)
  assert float(m["clip_frac"]) == 0.5


def test_to_arrays_masks():
  arr = B.to_arrays([[5, 6]], [[7, 8, 9, 10]], [[1, 1, 0, 1]], pad_id=0, multiple=8)
  assert arr["tokens"].shape == (1, 8)
  assert arr["gen"][0].tolist() == [0, 0, 1, 1, 0, 1, 0, 0]
  assert arr["last"][0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]


def _tiny():
  cfg = model_config.preset("tiny-llama", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                            d_ff=64, vocab_size=97)
  gd, p = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
  cgd, cp = nnx.split(ValueModel(cfg, rngs=nnx.Rngs(1)))
  return cfg, gd, nnx.to_pure_dict(p), cgd, nnx.to_pure_dict(cp)


def _batch(score):
  rng = np.random.default_rng(0)
  arr = B.to_arrays([list(rng.integers(1, 97, 5)) for _ in range(4)],
                    [list(rng.integers(1, 97, 8)) for _ in range(4)],
                    [[1, 1, 1, 0, 0, 1, 1, 1]] * 4, pad_id=0, multiple=16)
  arr["score"] = np.asarray(score, np.float32)
  arr["group"] = np.asarray([0, 0, 1, 1], np.int32)
  return {k: jnp.asarray(v) for k, v in arr.items()}


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_ppo_update_improves_surrogate(advantage):
  cfg, gd, p, cgd, cp = _tiny()
  pc = ppo.PPOConfig(advantage=advantage, chunk=32, block=16, micro_batches=2, beta=0.01)
  other = jax.tree.map(lambda x: x * 1.01, p)
  exp, em = ppo.make_experience(gd, cgd, gd, pc, num_groups=2)(p, cp, other, _batch([1, 0, 0, 1]))
  assert em["adv_finite"] == 1.0 and em["kl_full"] > 0
  assert float(jnp.abs(exp["adv"] * (1 - exp["gen"])).max()) == 0.0  # only generated tokens
  tx_a, tx_c = lm.make_optimizer(1e-2, 10), lm.make_optimizer(1e-2, 10)
  state = ppo.init_state(p, cp if pc.use_critic else None, tx_a, tx_c)
  update = ppo.make_update(gd, cgd, tx_a, tx_c, pc)
  batch = {"tokens": _batch([1, 0, 0, 1])["tokens"], "mask": _batch([1, 0, 0, 1])["mask"], **exp}
  losses = []
  for _ in range(4):
    state, m = update(state, batch, jax.random.key(0))
    losses.append(float(m["pg_loss"]))
    assert float(m["skipped"]) == 0.0
  assert losses[-1] < losses[0]
  assert ("critic" in state) == (advantage == "gae")


def test_nan_step_is_skipped():
  cfg, gd, p, cgd, cp = _tiny()
  pc = ppo.PPOConfig(chunk=32, block=16)
  tx = lm.make_optimizer(1e-2, 10)
  state = ppo.init_state(p, cp, tx, tx)
  before = jax.tree.map(np.asarray, state["actor"]["params"])
  b = _batch([1, 0, 0, 1])
  exp, _ = ppo.make_experience(gd, cgd, gd, pc)(p, cp, p, b)
  exp["adv"] = exp["adv"].at[0, 6].set(jnp.nan)
  state, m = ppo.make_update(gd, cgd, tx, tx, pc)(state, {"tokens": b["tokens"],
                                                           "mask": b["mask"], **exp},
                                                  jax.random.key(0))
  assert float(m["skipped"]) == 1.0 and int(state["step"]) == 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray,
                                                                   state["actor"]["params"]))


def _cfg(**kw):
  from configs import synthetic
  c = synthetic.get_config("smoke")
  for k, v in kw.items():
    sec, _, f = k.rpartition(".")
    (c[sec] if sec else c)[f] = v
  return c


def test_plans_and_bad_combinations():
  from dgpo_jax.pipeline import stages
  kinds = lambda **kw: [s.kind for s in stages.plan(_cfg(**kw))]
  assert kinds() == ["tgo", "kd", "rl"]
  assert kinds(ablation="no_cold_start") == ["rl"]
  assert kinds(ablation="inverted") == ["rl", "tgo", "kd"]
  assert stages.plan(_cfg(method="ppo"))[0] == stages.RL("reference", "all")
  assert stages.plan(_cfg(method="sft_ppo"))[1] == stages.KD("ce_fkl", 0.0)
  # the ablations that are config fields are those fields
  for abl, field, value in (("uniform_kl", "ppo.kl_rows", "all"),
                            ("no_teacher_guidance", "ppo.kl_rows", "none"),
                            ("kd_with_incorrect_tgo", "tgo.keep_incorrect", True)):
    assert stages.plan(_cfg(ablation=abl)) == stages.plan(_cfg(**{field: value})), abl
  assert stages.plan(_cfg(ablation="uniform_kl"))[2].kl_rows == "all"
  for bad, match in ((dict(method="nope"), "config.method"),
                     (dict(method="ppo", ablation="uniform_kl"), "ablation of dgpo"),
                     (dict(ablation="typo"), "config.ablation")):
    with pytest.raises(DgpoError, match=match):
      stages.plan(_cfg(**bad))
  with pytest.raises(ValueError, match="kl_estimator"):
    ppo.PPOConfig(kl_estimator="k2")


def test_tgo_sets_are_keyed_by_what_determines_them():
  """A TGO set (and the KD run on it) is named by its questions and temperature, so a run
  with another `tgo.num_questions` never reuses a smaller set's trajectories."""
  from dgpo_jax.pipeline import method
  keys = {method.tgo_key(_cfg(**{"tgo.num_questions": n, "tgo.temperature": t}))
          for n in (0, 16, 600) for t in (0.0, 1.0)}
  assert len(keys) == 6 and "allq-t0" in keys and "600q-t1" in keys


@pytest.mark.slow
def test_losses_on_listed_positions_equal_the_masked_losses(tiny_model):
  """SFT's LM loss and the KD loss computed on the gathered loss positions (`loss_idx`) equal
  the same losses over every position with the mask, values and gradients."""
  from dgpo_jax.data import lm_data
  from dgpo_jax.rl import distill
  cfg, (g, params) = tiny_model()
  _, (gt, pt) = tiny_model(seed=1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (4, 33)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[3, 20:] = 0
  gen = (rng.random(tokens.shape) < 0.3).astype(np.int32) * mask
  gen[:, 0] = 0
  batch = {"tokens": tokens, "mask": mask, "loss_mask": gen}
  listed = dict(batch, loss_idx=lm_data.loss_positions(gen, 16))
  kd = distill.make_loss(g, gt, "ce_fkl", lam=1.0, chunk=128, block=64)
  for fn in (lambda p, b: lm.lm_loss(g, p, b)[0], lambda p, b: kd(g, p, b, pt)[0]):
    (a, ga), (b, gb) = (jax.value_and_grad(fn)(params, x) for x in (batch, listed))
    np.testing.assert_allclose(b, a, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(gb), jax.tree.leaves(ga)):
      np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.slow
def test_kd_with_cached_teacher_states_equals_kd_with_the_teacher_run(tiny_model):
  """`kd.cache_teacher`: the teacher's states computed once (`method.teacher_cache`, rows of
  several widths) and cut into each batch by `masked_batches` give the KD loss and gradients
  that running the teacher inside the step gives, batch for batch."""
  from dgpo_jax.data import lm_data
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import method
  from dgpo_jax.rl import distill
  from dgpo_jax.train.step import Model
  cfg, (g, params) = tiny_model()
  tcfg, (gt, pt) = tiny_model(seed=1)
  rng = np.random.default_rng(0)
  n, t = 12, 150
  tokens = rng.integers(3, cfg.vocab_size, (n, t)).astype(np.int32)
  lengths = rng.integers(20, t, n)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  gen = (rng.random(tokens.shape) < 0.3).astype(np.int32) * mask
  gen[:, 0] = 0
  data = {"tokens": tokens, "mask": mask, "gen": gen}
  teacher = Model(tcfg, gt, pt, None)
  cache = method.teacher_cache(teacher, data, 4, sharding.make_mesh())
  plain = lm_data.masked_batches(tokens, mask, gen, 4, 3)
  cached = lm_data.masked_batches(tokens, mask, gen, 4, 3, per_position={"teacher_h": cache})
  widths = set()
  for loss in ("ce_fkl", "skew_fkl", "taid"):  # every KD loss the tables run with the cache
    kd = distill.make_loss(g, gt, loss, lam=1.0, chunk=128, block=64)
    fn = lambda p, b: kd(g, p, b, pt)[0]
    for step in range(6):
      a, b = (dict(x, step=np.array([step], np.int32)) for x in (plain(step), cached(step)))
      widths.add(a["tokens"].shape[1])
      assert b["teacher_h"].shape == a["loss_idx"].shape + (tcfg.d_model,)
      (la, ga), (lb, gb) = (jax.value_and_grad(fn)(params, x) for x in (a, b))
      np.testing.assert_allclose(lb, la, rtol=1e-5, err_msg=loss)
      for x, y in zip(jax.tree.leaves(gb), jax.tree.leaves(ga)):
        np.testing.assert_allclose(x, y, atol=1e-6, err_msg=loss)
  assert len(widths) > 1
  with pytest.raises(DgpoError, match="teacher_h"):
    lm_data.masked_batches(tokens, mask, gen, 4, 3, per_position={"teacher_h": cache[:, :3]})


def test_stored_teacher_cache_is_read_back_and_keyed_by_the_teacher(tiny_model, tmp_path):
  """Another method or seed on the same TGO set reads the teacher's cached states from the
  workdir; a different teacher (or set) gets its own file."""
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import method
  from dgpo_jax.train.step import Model
  tcfg, (gt, pt) = tiny_model(seed=1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, tcfg.vocab_size, (6, 40)).astype(np.int32)
  mask = np.ones_like(tokens)
  gen = (rng.random(tokens.shape) < 0.3).astype(np.int32)
  gen[:, 0] = 0
  data = {"tokens": tokens, "mask": mask, "gen": gen}
  mesh, wd = sharding.make_mesh(), str(tmp_path)
  teacher = Model(tcfg, gt, pt, None)
  first = method.stored_teacher_cache(wd, teacher, data, 4, mesh)
  files = sorted((tmp_path / "tgo" / "teacher_states").iterdir())
  assert len(files) == 1
  np.testing.assert_array_equal(first, method.teacher_cache(teacher, data, 4, mesh))
  np.testing.assert_array_equal(method.stored_teacher_cache(wd, teacher, data, 4, mesh), first)
  other = Model(tcfg, gt, jax.tree.map(lambda x: x * 1.01, pt), None)
  method.stored_teacher_cache(wd, other, data, 4, mesh)
  assert len(list((tmp_path / "tgo" / "teacher_states").iterdir())) == 2
  files[0].write_bytes(b"\x93NUMPY truncated")  # a damaged file is computed again
  np.testing.assert_array_equal(method.stored_teacher_cache(wd, teacher, data, 4, mesh), first)
  np.testing.assert_array_equal(np.load(files[0]), first)


def test_kd_weight_from_the_batch_equals_the_built_in_one(tiny_model):
  """`lam` in the batch stands for make_loss's λ, so SFT (λ = 0) and KD (λ = 1) share one
  compiled update."""
  from dgpo_jax.data import lm_data
  from dgpo_jax.rl import distill
  cfg, (g, params) = tiny_model()
  tcfg, (gt, pt) = tiny_model(seed=1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (4, 30)).astype(np.int32)
  gen = (rng.random(tokens.shape) < 0.3).astype(np.int32)
  gen[:, 0] = 0
  batch = {"tokens": tokens, "mask": np.ones_like(tokens), "loss_mask": gen,
           "loss_idx": lm_data.loss_positions(gen, 16)}
  shared = distill.make_loss(g, gt, "ce_fkl", lam=1.0, chunk=128, block=64)
  for lam in (0.0, 0.5, 1.0):
    own = distill.make_loss(g, gt, "ce_fkl", lam=lam, chunk=128, block=64)
    a = own(g, params, batch, pt)[0]
    b = shared(g, params, dict(batch, lam=np.full((4,), lam, np.float32)), pt)[0]
    assert float(a) == float(b), lam
