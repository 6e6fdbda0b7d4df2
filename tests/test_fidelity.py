"""Fidelity to the reference DGPO code (omron-sinicx/dgpo on veRL): fixtures written from the
reference's logic (read, not copied), asserted against ours. docs/fidelity.md lists every
behaviour, where it lives in the reference and whether we match it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import qwen05b
from dgpo_jax.pipeline import rl_stage
from dgpo_jax.retrieval.retriever import Doc
from dgpo_jax.rl import algos
from dgpo_jax.rollout import text as T
from tests.test_hostile import _WordTok  # character ids: every byte of the text kept
from dgpo_jax.train import lm


def _reference_constant_with_warmup(step, warmup):
  """The multiplier of the reference's get_constant_schedule_with_warmup
  (verl/utils/torch_functional.py), which its actor and critic use."""
  return min(1.0, step / max(1.0, warmup))


def _lr_per_update(tx, n_updates):
  """The learning rate each of `n_updates` consecutive updates applies, read off AdamW's
  decoupled weight decay: with a zero gradient the update of a parameter equal to 1 is
  -lr_t · weight_decay."""
  p = jnp.ones(())
  opt = tx.init(p)

  def body(opt, _):
    up, opt = tx.update(jnp.zeros(()), opt, p)
    return opt, up

  _, ups = jax.lax.scan(body, opt, None, length=n_updates)
  return np.asarray(ups)


@pytest.mark.parametrize("which", ["actor", "critic"])
def test_paper_config_learning_rates_match_the_reference_schedule(which):
  p = qwen05b.get_config().ppo
  updates_per_step = p.epochs * (p.questions_per_step // p.mini_batch)
  assert updates_per_step == 2  # 512 rows in mini-batches of 256: two updates per PPO step
  tx_a, tx_c = rl_stage.optimizers(p, updates_per_step)
  tx, peak, ratio = ((tx_a, p.actor_lr, p.actor_warmup_ratio) if which == "actor" else
                     (tx_c, p.critic_lr, p.critic_warmup_ratio))
  lr = -_lr_per_update(tx, p.steps * updates_per_step) / p.weight_decay
  warmup = int(ratio * p.steps)  # the reference: int(lr_warmup_steps_ratio * total_steps)
  for step in (0, 142, 285, 500, 999):
    want = peak * _reference_constant_with_warmup(step, warmup)
    # Both updates of one PPO step use that step's rate: the scheduler steps per PPO step.
    got = lr[step * updates_per_step:(step + 1) * updates_per_step]
    np.testing.assert_allclose(got, [want] * updates_per_step, rtol=1e-5, atol=1e-14)
  # The whole run's summed rate, against the reference's (ours was 37% of it with a cosine
  # schedule counted per update).
  ref_total = sum(peak * _reference_constant_with_warmup(s, warmup) for s in range(p.steps))
  np.testing.assert_allclose(lr.sum() / updates_per_step, ref_total, rtol=1e-5)


def test_paper_config_adamw_matches_torch_adamw_update():
  """The reference's AdamW (torch.optim.AdamW, β = (0.9, 0.999), eps 1e-8, decay 0.01) on a
  fixed gradient sequence at the constant rate, against ours after warmup."""
  p = qwen05b.get_config().ppo
  assert (p.b2, p.weight_decay, p.grad_clip, p.lr_schedule) == (0.999, 0.01, 1.0, "constant")
  tx = lm.make_optimizer(1e-3, 10, 0, p.weight_decay, 100.0, p.b2, p.lr_schedule)
  grads = np.array([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.05], [0.2, 0.2]], np.float32)
  w = jnp.array([1.0, -2.0])
  opt = tx.init(w)
  ref_w, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
  for t, g in enumerate(grads, start=1):
    up, opt = tx.update(jnp.asarray(g), opt, w)
    w = w + up
    lr = 1e-3 * min(1.0, (t - 1) / 1.0)  # its LambdaLR: step 0 at rate 0, even with no warmup
    ref_w = ref_w * (1 - lr * 0.01)  # torch: decoupled decay first, then the Adam step
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    ref_w = ref_w - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
  np.testing.assert_allclose(np.asarray(w), ref_w, rtol=1e-6)


def test_unknown_schedule_is_a_clear_config_error():
  p = qwen05b.get_config().ppo
  p.lr_schedule = "linear"
  with pytest.raises(Exception, match="ppo.lr_schedule"):
    rl_stage.optimizers(p, 1)



def _reference_kl_penalty(logprob, ref_logprob, kind):
  """veRL's `kl_penalty` (core_algos.py), in numpy."""
  if kind == "kl":
    return logprob - ref_logprob
  if kind == "rkl":
    return ref_logprob - logprob
  kl = ref_logprob - logprob if kind == "low_var_kl" else logprob - ref_logprob
  return np.clip(np.exp(kl) - kl - 1, -10, 10)


@pytest.mark.parametrize("ours,theirs", [("k1", "kl"), ("low_var_kl", "low_var_kl"),
                                         ("rkl", "rkl"), ("low_var_rkl", "low_var_rkl")])
def test_kl_estimators_match_the_reference(ours, theirs):
  # Log-ratios from −25 to 25 nats: the clamp at 10 is reached in both directions.
  logp = np.linspace(-25.0, -0.01, 41).astype(np.float32)
  logq = logp[::-1].copy()
  got = np.asarray(algos.KL_ESTIMATORS[ours](jnp.asarray(logp), jnp.asarray(logq), None))
  want = _reference_kl_penalty(logp.astype(np.float64), logq.astype(np.float64), theirs)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  if ours in ("low_var_kl", "low_var_rkl"):
    assert got.max() == 10.0  # clamped


def _reference_grpo(scores, index, eps=1e-6):
  """veRL's compute_grpo_outcome_advantage on outcome scores: per prompt index, (s − mean) /
  (torch.std, unbiased + eps); a prompt with one response keeps mean 0, std 1."""
  out = np.zeros(len(scores))
  for g in set(index):
    sel = [i for i, x in enumerate(index) if x == g]
    s = np.asarray([scores[i] for i in sel], np.float64)
    mean, std = (0.0, 1.0) if len(s) == 1 else (s.mean(), s.std(ddof=1))
    out[sel] = (s - mean) / (std + eps)
  return out


def test_grpo_advantages_use_the_reference_unbiased_std():
  score = np.array([1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 0], np.float32)  # groups of 5, 5 and 1
  group = np.array([0] * 5 + [1] * 5 + [2], np.int32)
  p = qwen05b.get_config().ppo
  assert p.grpo_std == "unbiased"
  got = np.asarray(algos.grpo_advantages(jnp.asarray(score), jnp.asarray(group),
                                         jnp.ones((11, 1)), 3)[:, 0])
  np.testing.assert_allclose(got, _reference_grpo(score, list(group)), rtol=1e-5, atol=1e-6)
  # The population std (ours before) is √(4/5) of the unbiased one: advantages 1.118× larger.
  pop = np.asarray(algos.grpo_advantages(jnp.asarray(score), jnp.asarray(group),
                                         jnp.ones((11, 1)), 3, unbiased=False)[:, 0])
  np.testing.assert_allclose(pop[:10] / got[:10], np.sqrt(5 / 4), rtol=1e-4)


def test_observation_token_ids_are_the_reference_string():
  """The reference's observation (search_r1/llm_agent/generation.py): "\\n\\n<information>" +
  the passages string `Doc i(Title: t) text\\n`… stripped + "</information>\\n\\n"."""
  from dgpo_jax.retrieval.retriever import Doc
  from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine
  docs = [Doc("1", '"Paris"', "Paris is the capital of France.", 1.0),
          Doc("2", '"Seine"', "The Seine is a river.", 0.5)]
  passages = "".join(f"Doc {i + 1}(Title: {d.title}) {d.text}\n" for i, d in enumerate(docs))
  reference = "\n\n<information>" + passages.strip() + "</information>\n\n"
  eng = RolloutEngine(None, _WordTok(), None, RolloutConfig(max_obs_tokens=500))
  assert eng.observation_ids(docs) == [ord(c) for c in reference]


def _reference_turn(resp: str):
  """The reference's handling of one raw turn (search_r1/llm_agent/generation.py): the text
  (special tokens skipped) is cut after the first `</search>`, else after `</answer>`; the
  action is the first `<(search|answer)>(.*?)</\\1>` match; None = invalid."""
  import re
  resp = (resp.split("</search>")[0] + "</search>" if "</search>" in resp else
          resp.split("</answer>")[0] + "</answer>" if "</answer>" in resp else resp)
  m = re.search(r"<(search|answer)>(.*?)</\1>", resp, re.DOTALL)
  return resp, (m.group(1), m.group(2).strip()) if m else (None, "")


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
  from dgpo_jax.models.tokenizer import SentencePieceTokenizer
  from tests.test_rollout import train_tokenizer
  return SentencePieceTokenizer(train_tokenizer(tmp_path_factory.mktemp("spm")),
                                chat_format="plain")


def test_raw_turns_stop_and_parse_as_the_reference(spm_tok):
  """EOS without an action (the row goes on, the EOS is not kept), a search in the last turn
  (cut at </search>, no answer), nested and stray tags."""
  from tests.test_rollout import _engine
  tok = spm_tok
  scripts = {
      0: ["<think> let me think </think><EOS>", "<answer> paris </answer>"],
      1: ["<search> seine </search>",
          "<search> more </search><information> made up </information><answer> x </answer>"],
      2: ["<answer> the <search> seine </search> river </answer>"],
      3: ["<search> a </answer> b </search>", "<answer> c </answer>"],
  }
  eng, _ = _engine(tok, scripts, max_turns=1)
  a, b, c, d = eng.run(["q0", "q1", "q2", "q3"], jax.random.key(0))
  # Row 0: the reference sees no action → invalid message, next turn answers.
  assert _reference_turn("<think> let me think </think>")[1][0] is None
  assert a.answer == "paris" and a.flags["eos_without_action"] == 1
  assert a.flags["invalid_action"] == 1 and not set(tok.eos_ids) & set(a.response_ids)
  # Row 1: the last turn is cut at </search>; a search there is no answer (score 0).
  kept, (action, _) = _reference_turn(scripts[1][1])
  assert action == "search" and kept.endswith("</search>")
  last = b.turns[-1]
  assert tok.decode(b.response_ids[last["start"]:last["end"]]).replace(" ", "") == \
      kept.replace(" ", "")
  assert b.answer is None and b.flags["no_answer"] == 1 and b.num_searches == 1
  # Row 2: a search nested in an answer resolves to the same action as the reference.
  _, (action, payload) = _reference_turn(scripts[2][0])
  assert action == "search" and c.turns[0]["action"] == "search" and c.queries[0] == payload
  # Row 3, a deliberate deviation (docs/fidelity.md): the reference decodes past a stray
  # </answer> and searches "a </answer> b"; ours stops at the first closing tag, a turn
  # that is then invalid.
  assert _reference_turn(scripts[3][0])[1] == ("search", "a </answer> b")
  assert d.turns[0]["action"] == "invalid" and d.answer == "c"


def _reference_em(solution_str, golden):
  """The reference's compute_score_em (verl/utils/reward_score/qa_em.py) on prompt +
  response: the last of ≥ 2 `<answer>(.*?)</answer>` matches, normalized EM."""
  import re
  from dgpo_jax.eval.metrics import normalize_answer
  matches = list(re.finditer(r"<answer>(.*?)</answer>", solution_str, re.DOTALL))
  if len(matches) <= 1:
    return 0.0
  pred = normalize_answer(matches[-1].group(1).strip())
  return float(any(normalize_answer(g) == pred for g in golden))


def test_reference_em_quirks_stay_out(spm_tok):
  """Two reference bugs ours does not have: EM read from prompt + response counts the
  prompt's example `<answer> Beijing </answer>` for a response with no answer, and an
  `<answer>` tag inside a retrieved document counts as the model's answer."""
  from dgpo_jax.rl import batch as B
  from tests.test_rollout import FakeRetriever, _engine
  tok = spm_tok
  planted = Doc("d", '"x"', "the answer is <answer> Paris </answer>", 1.0)

  class Planting(FakeRetriever):
    def retrieve(self, queries, topk=3):
      return [[planted] for _ in queries]

  scripts = {0: ["<think> no idea </think>"],  # never answers
             1: ["<search> capital </search>", "<think> hmm </think>"]}
  eng, _ = _engine(tok, scripts, retriever=Planting(), max_turns=1)
  trajs = eng.run(["what is the capital of china", "what is the capital of france"],
                  jax.random.key(0))
  golden = [["Beijing"], ["Paris"]]
  arr = B.from_trajectories(trajs, golden, tok.pad_id, width=1024)
  assert list(arr["score"]) == [0.0, 0.0]
  # The same texts scored by the reference's logic: 1.0 each.
  prompt0 = T.user_message("what is the capital of china")
  assert _reference_em(prompt0 + "<think> no idea </think>", ["Beijing"]) == 1.0
  raw_obs = "\n\n<information>Doc 1(Title: \"x\") " + planted.text + "</information>\n\n"
  prompt1 = T.user_message("what is the capital of france")
  assert _reference_em(prompt1 + "<search> capital </search>" + raw_obs + "<think> hmm </think>",
                       ["Paris"]) == 1.0


def test_observation_cap_keeps_the_closing_tag():
  """The reference cuts an observation at 500 tokens, closing tag included (a quarter of
  3-passage wiki-18 observations lose it); ours cuts the passages, never the tag."""
  from dgpo_jax.retrieval.retriever import Doc as D
  from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine
  eng = RolloutEngine(None, _WordTok(), None, RolloutConfig(max_obs_tokens=120))
  ids = eng.observation_ids([D(str(i), f'"t{i}"', "word " * 200, 1.0) for i in range(3)])
  text = _WordTok().decode(ids)
  assert len(ids) == 120 and text.endswith("</information>\n\n")
  reference = ("\n\n<information>" + "".join(
      f'Doc {i + 1}(Title: "t{i}") ' + "word " * 200 + "\n" for i in range(3)).strip() +
               "</information>\n\n")[:120]
  assert "</information>" not in reference


def test_paper_critic_head_is_the_reference_token_classification_init():
  """A fresh HF token-classification head (num_labels 1): weights N(0, 0.02), bias 0."""
  from flax import nnx
  from dgpo_jax.models import config as model_config
  from dgpo_jax.models.decoder import ValueModel
  assert qwen05b.get_config().ppo.critic_head_init == "normal"
  cfg = model_config.preset("tiny-llama", d_model=4096, n_layers=1, vocab_size=64)
  vm = ValueModel(cfg, rngs=nnx.Rngs(0), head_init="normal")
  w = np.asarray(vm.value_w[...])
  assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002 and float(vm.value_b[...]) == 0
  assert not np.asarray(ValueModel(cfg, rngs=nnx.Rngs(0)).value_w[...]).any()  # "zeros"


def _reference_gae_whiten(rewards, values, response_mask, gamma=1.0, lam=1.0):
  """The reference's `compute_gae_advantage_return` (unmasked recursion over the padded
  response, then `masked_whiten` with the unbiased variance) in numpy, response coordinates."""
  adv = np.zeros_like(rewards)
  last = np.zeros(rewards.shape[0])
  for t in reversed(range(rewards.shape[1])):
    nxt = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
    last = rewards[:, t] + gamma * nxt - values[:, t] + gamma * lam * last
    adv[:, t] = last
  returns = adv + values
  m = response_mask
  mean = (adv * m).sum() / m.sum()
  var = (((adv - mean) ** 2) * m).sum() / m.sum() * m.sum() / (m.sum() - 1)
  return (adv - mean) / np.sqrt(var + 1e-8), returns


def test_critic_positions_match_the_reference_on_a_mixed_batch():
  """Rows of different lengths whose responses mix generated and observation tokens: the
  reference's critic values sit at the input before each response token (masked by that
  input's attention mask, so the terminal position after the last token is kept), GAE runs
  unmasked, advantages are whitened over the response's attention mask, the value loss uses
  the shifted mask. Ours with `critic_positions="response"`, mapped onto response coords."""
  from flax import nnx

  from dgpo_jax.models import config as model_config
  from dgpo_jax.models.decoder import Decoder, ValueModel
  from dgpo_jax.rl import batch as B
  from dgpo_jax.rl import ppo
  cfg = model_config.preset("tiny-llama", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                            d_ff=64, vocab_size=97)
  gd, p = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
  cgd, cp = nnx.split(ValueModel(cfg, rngs=nnx.Rngs(1), head_init="normal"))
  p, cp = nnx.to_pure_dict(p), nnx.to_pure_dict(cp)
  rng = np.random.default_rng(0)
  P = 5  # prompt tokens (every row)
  gens = [[1, 1, 1, 0, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1], [1, 1, 1, 1]]  # 0 = observation token
  arr = B.to_arrays([list(rng.integers(1, 97, P)) for _ in gens],
                    [list(rng.integers(1, 97, len(g))) for g in gens], gens, pad_id=0, width=16)
  arr["score"] = np.asarray([1.0, 0.0, 1.0], np.float32)
  arr["group"] = np.zeros(3, np.int32)
  batch = {k: jnp.asarray(v) for k, v in arr.items()}
  pc = ppo.PPOConfig(beta=0.0, critic_positions="response", chunk=32, block=16)
  exp, _ = ppo.make_experience(gd, cgd, gd, pc)(p, cp, p, batch)

  # The reference, in response coordinates i (response token i sits at column P + i).
  R = arr["tokens"].shape[1] - P
  raw_values = np.asarray(ppo.values_of(cgd, cp, batch["tokens"][:, :-1], batch["mask"][:, :-1]))
  attn = arr["mask"]
  values = raw_values[:, P - 1:P - 1 + R] * attn[:, P - 1:P - 1 + R]  # input before token i
  response_mask = attn[:, P:P + R].astype(np.float64)
  rewards = np.zeros((3, R))
  for r, g in enumerate(gens):
    rewards[r, len(g) - 1] = arr["score"][r]  # the score on the last response token
  adv_ref, returns_ref = _reference_gae_whiten(rewards, values.astype(np.float64), response_mask)
  eos_mask = attn[:, P - 1:P - 1 + R]  # the critic's loss mask (dp_critic)

  ours = lambda k: np.asarray(exp[k])[:, P - 1:P - 1 + R]
  np.testing.assert_array_equal(ours("vmask"), eos_mask)
  np.testing.assert_allclose(ours("adv") * response_mask, adv_ref * response_mask, atol=1e-5)
  np.testing.assert_allclose(ours("returns") * eos_mask, returns_ref * eos_mask, atol=1e-5)
  np.testing.assert_allclose(ours("old_values"), values, atol=1e-6)
  # The terminal position (input = a row's last token) is trained towards a return of 0.
  for r, g in enumerate(gens):
    assert eos_mask[r, len(g)] == 1 and abs(ours("returns")[r, len(g)]) < 1e-6
  # Observation tokens carry advantages (they enter the whitening), but the policy loss and
  # the KL reward still use generated tokens only.
  assert np.abs(ours("adv") * (1 - ours("gen")) * response_mask).max() > 0


def test_grpo_kl_is_a_loss_as_the_reference():
  """Search-R1's GRPO (`use_kl_loss`): no KL in the reward; the actor loss adds
  kl_loss_coef × the token-mean `low_var_kl` of the current policy's log-probs against the
  reference model's (dp_actor), a term the update differentiates."""
  from flax import nnx

  from configs import synthetic
  from dgpo_jax.models import config as model_config
  from dgpo_jax.models.decoder import Decoder
  from dgpo_jax.pipeline import stages
  from dgpo_jax.rl import batch as B
  from dgpo_jax.rl import ppo
  c = synthetic.get_config()
  with c.unlocked():
    c.method = "grpo"
  (rl,) = stages.plan(c)
  assert (rl.kl_rows, rl.kl_loss_coef) == ("none", 0.001)
  cfg = model_config.preset("tiny-llama", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                            d_ff=64, vocab_size=97)
  gd, p = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
  p = nnx.to_pure_dict(p)
  ref = jax.tree.map(lambda x: x * 1.3, p)  # a reference model the policy differs from
  rng = np.random.default_rng(1)
  gen = [[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]]
  arr = B.to_arrays([list(rng.integers(1, 97, 4)) for _ in gen],
                    [list(rng.integers(1, 97, 6)) for _ in gen], gen, pad_id=0, width=16)
  arr["score"], arr["group"] = np.asarray([1.0, 0.0], np.float32), np.zeros(2, np.int32)
  batch = {k: jnp.asarray(v) for k, v in arr.items()}
  pc = ppo.PPOConfig(advantage="grpo", kl_rows="none", kl_loss_coef=0.001, beta=0.001,
                     chunk=32, block=16)
  exp, em = ppo.make_experience(gd, None, gd, pc, num_groups=1)(p, None, ref, batch)
  assert float(em["token_reward_sum"]) == pytest.approx(arr["score"].sum() / 2)  # no KL
  tx = lm.make_optimizer(1e-3, 10)
  _, m = ppo.make_update(gd, None, tx, tx, pc)(
      ppo.init_state(jax.tree.map(jnp.copy, p), None, tx, tx),  # the update donates its state
      {"tokens": batch["tokens"], "mask": batch["mask"], **exp},
      jax.random.key(0))

  def logp(params):  # log π(y_t) of each target, from a plain forward
    logits, _ = nnx.merge(gd, params)(batch["tokens"][:, :-1], valid_bt=batch["mask"][:, :-1])
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return np.asarray(jnp.take_along_axis(lp, batch["tokens"][:, 1:, None], -1)[..., 0])

  mask = arr["gen"][:, 1:].astype(np.float64)
  kl = logp(ref) - logp(p)  # the reference's low_var_kl: ref_logprob − logprob ...
  kld = np.clip(np.exp(kl) - kl - 1, -10, 10)  # ... then exp(kl) − kl − 1, clamped
  want = (kld * mask).sum() / mask.sum()
  assert float(m["kl_loss"]) == pytest.approx(want, rel=1e-4)
  assert float(m["loss"]) == pytest.approx(
      float(m["pg_loss"]) - pc.ent_coef * float(m["entropy"]) + 0.001 * want, rel=1e-5)


LLAMA32_TEMPLATE_HEAD = (  # the opening of Llama-3.2-1B-Instruct's chat_template (abridged)
    '{{- bos_token }}\n{%- if not date_string is defined %}\n    {%- if strftime_now is defined '
    '%}\n        {%- set date_string = strftime_now("%d %b %Y") %}\n    {%- else %}\n        '
    '{%- set date_string = "26 Jul 2024" %}\n    {%- endif %}\n{%- endif %}\n'
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}')


def test_llama3_prompt_is_the_reference_chat_template(tmp_path):
  """The reference applies the model's chat template (rl_dataset.py:128). For Llama-3.2-1B-
  Instruct with one user message and no system message: BOS, a system header with the
  knowledge cutoff and a date, the user message `| trim`med, the assistant header. The date
  is the template's fallback, not the day of the run (docs/fidelity.md)."""
  import json

  from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

  from dgpo_jax.models.tokenizer import load_tokenizer
  msg = T.user_message("who wrote hamlet")
  want = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
          "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\n" + msg.strip() + "<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")
  specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
  tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{s: 1 + i for i, s in enumerate(specials)}},
                                   unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"chat_template": LLAMA32_TEMPLATE_HEAD}))
  t = load_tokenizer(str(tmp_path), bos_id=1, eos_ids=(4,))
  assert t.chat_format == "llama3"
  assert t.apply_chat(msg) == want
  assert t.encode(t.apply_chat(msg))[0] == 1  # BOS is in the prompt, as the reference's
