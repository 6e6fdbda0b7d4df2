"""Stage "prepare": the synthetic world, its tokenizer and index, and trained tiny models.

world files → SentencePiece tokenizer (action tags are single pieces) → BM25 index → oracle
demonstrations with real retrieval observations → LM pretraining of teacher and student on
the world's text (held-out subjects excluded) → teacher SFT on the demonstrations → teacher
evaluation on the dev split. Every product is cached in the workdir and reused; each training
run checkpoints and resumes.
"""

import dataclasses
import json
import os
import shutil
import zlib

import jax
import numpy as np
from flax import nnx

from dgpo_jax.data import lm_data
from dgpo_jax.data import synthetic_world as SW
from dgpo_jax.eval import evaluate as E
from dgpo_jax.eval import probe
from dgpo_jax.eval.metrics import exact_match
from dgpo_jax.models import config as model_config
from dgpo_jax.models import hf_io
from dgpo_jax.models.decoder import Decoder
from dgpo_jax.models.tokenizer import SentencePieceTokenizer
from dgpo_jax.parallel import sharding
from dgpo_jax.pipeline import setup
from dgpo_jax.retrieval import index as index_lib
from dgpo_jax.retrieval.retriever import Doc, IndexRetriever
from dgpo_jax.rollout import text as T
from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine
from dgpo_jax.train.loop import FitConfig, fit
from dgpo_jax.utils import cli


def _log(msg):
  if jax.process_index() == 0:
    print(msg, flush=True)


def build_world(config, workdir):
  w = config.world
  d = os.path.join(workdir, "world")
  if not os.path.isfile(os.path.join(d, "test.jsonl")):
    world = SW.generate(config.seed, w.n_countries, w.n_cities, w.n_orgs, w.n_people, w.n_works)
    counts = SW.write(world, d + ".tmp", config.seed)
    os.replace(d + ".tmp", d) if not os.path.exists(d) else None
    _log(f"[prepare] world: {counts}")
  return d


def rollout_config(config) -> RolloutConfig:
  r = config.rollout
  return RolloutConfig(max_turns=r.max_turns, max_turn_tokens=r.max_turn_tokens,
                       max_obs_tokens=r.max_obs_tokens, topk=config.retrieval.topk)


def demonstrations(config, workdir, tok, retriever, questions):
  """Oracle trajectories as (tokens, loss_mask) rows; observations from the real retriever.

  Cached under a name that hashes what shapes the rows (vocabulary, rollout limits, the
  observation text around a fixed sample), so a change of format builds them again instead
  of reusing stale rows."""
  engine = RolloutEngine(None, tok, retriever, rollout_config(config))
  sample = engine.observation_ids([Doc("0", '"T"', "A sample passage.", 1.0)])
  key = zlib.crc32(json.dumps([tok.vocab_size, dataclasses.asdict(engine.cfg), sample,
                               len(questions)]).encode())
  out_f = os.path.join(workdir, "world", f"sft_{tok.vocab_size}_{key:08x}.npz")
  if os.path.isfile(out_f):
    z = np.load(out_f)
    return z["tokens"], z["mask"], z["loss_mask"]
  steps = [SW.oracle_steps(q) for q in questions]
  rows = [(engine.prompt_ids(q["question"]), [], []) for q in questions]
  for hop in range(max(len(s) for s in steps)):
    pending = [i for i, s in enumerate(steps) if hop < len(s)]
    queries = [steps[i][hop][2] for i in pending if steps[i][hop][0] == "search"]
    docs = iter(retriever.retrieve(queries, config.retrieval.topk)) if queries else iter(())
    for i in pending:
      kind, think, payload = steps[i][hop]
      _, ids, mask = rows[i]
      gen = tok.encode(f"<think> {think} </think>\n<{kind}> {payload} </{kind}>")
      if kind == "answer":
        gen = gen + [tok.eos_ids[0]]
      ids += gen
      mask += [1] * len(gen)
      if kind == "search":
        obs = engine.observation_ids(next(docs))
        ids += obs
        mask += [0] * len(obs)
  T_ = -(-(max(len(p) + len(r) for p, r, _ in rows) + 1) // 32) * 32
  tokens = np.full((len(rows), T_), tok.pad_id, np.int32)
  valid = np.zeros_like(tokens)
  loss = np.zeros_like(tokens)
  for i, (p, r, m) in enumerate(rows):
    n = len(p) + len(r)
    tokens[i, :n] = p + r
    valid[i, :n] = 1
    loss[i, len(p):n] = m
  np.savez(out_f, tokens=tokens, mask=valid, loss_mask=loss)
  return tokens, valid, loss


def model_cfg(config, which, tok):
  m = config[which]
  return model_config.preset("tiny-llama", d_model=m.d_model, n_layers=m.n_layers,
                             n_heads=m.n_heads, n_kv_heads=m.n_kv_heads, d_ff=m.d_ff,
                             vocab_size=tok.vocab_size, eos_ids=tok.eos_ids, pad_id=tok.pad_id,
                             bos_id=tok.bos_id, max_seq_len=4096, scan_unroll=m.n_layers)


def evaluate(cfg, graphdef, params, tok, retriever, config, questions, rng_seed=0):
  """Greedy rollouts; EM overall and per family. Returns (summary, trajectories)."""
  rc = rollout_config(config)
  engine = RolloutEngine(None, tok, retriever, rc)
  engine.sampler = engine.sampler_for(graphdef, params, [q["question"] for q in questions])
  trajs = E.rollouts(engine, questions, config.eval.batch_size, rng_seed=rng_seed)
  by_family = {}
  for q, t in zip(questions, trajs):
    family = q.get("family", q.get("data_source", "all"))
    by_family.setdefault(family, []).append(exact_match(t.answer, q["golden_answers"]))
  summary = {f: float(np.mean(v)) for f, v in sorted(by_family.items())}
  summary["avg"] = float(np.mean([exact_match(t.answer, q["golden_answers"])
                                  for q, t in zip(questions, trajs)]))
  summary["searches_per_question"] = float(np.mean([t.num_searches for t in trajs]))
  return summary, trajs


def run(config, workdir):
  """Prepares world, tokenizer, index, and the pretrained student and SFT'd teacher."""
  d = build_world(config, workdir)
  tok_prefix = os.path.join(workdir, "tokenizer", f"spm{config.tokenizer.vocab_size}")
  if not os.path.isfile(tok_prefix + ".model"):
    train = cli.read_jsonl(os.path.join(d, "train.jsonl"))
    texts = [l.strip() for l in open(os.path.join(d, "pretrain.txt"))]
    texts += [T.PROMPT, T.INVALID_ACTION] + [
        " ".join(f"<think> {th} </think> <{k}> {p} </{k}>" for k, th, p in SW.oracle_steps(q))
        for q in train[:2000]]
    lm_data.train_sentencepiece(texts, tok_prefix, config.tokenizer.vocab_size)
  tok = SentencePieceTokenizer(tok_prefix + ".model", chat_format="plain")
  index_dir = os.path.join(d, "index_bm25")
  if not os.path.isfile(os.path.join(index_dir, "meta.json")):
    index_lib.build(os.path.join(d, "corpus.jsonl"), index_dir, "bm25")
  retriever = IndexRetriever(index_dir)
  mesh = sharding.make_mesh(config.mesh)
  rules = setup.rules(config)
  train_q = cli.read_jsonl(os.path.join(d, "train.jsonl"))[:config.prep.sft_examples]
  sft = demonstrations(config, workdir, tok, retriever, train_q)
  docs = [tok.encode(l.strip()) for l in open(os.path.join(d, "pretrain.txt"))]
  drills = os.path.join(d, "drills.jsonl")
  if config.prep.drills and os.path.isfile(drills):
    docs += [tok.encode(r["text"]) for r in cli.read_jsonl(drills)]
    docs = [docs[i] for i in np.random.default_rng(config.seed).permutation(len(docs))]
  eos = tok.eos_ids[0]
  lm_rows = lm_data.pack(docs, config.data.seq_len, eos)
  results = {}
  models = {}
  done_f = os.path.join(workdir, "prepare_result.json")
  fresh = not os.path.isfile(done_f)
  probe_items = probe.items(d, tok, n=config.prep.probe_items, seed=config.seed) if fresh else {}

  def measure(key, graphdef, params):  # base skills, once per preparation
    if fresh:
      results.setdefault("probe", {})[key] = probe.accuracy(graphdef, params, probe_items,
                                                            tok.pad_id)
      _log(f"[prepare] {key} probe: {results['probe'][key]}")

  for which in ("student", "teacher"):
    cfg = model_cfg(config, which, tok)
    graphdef, params, shardings = sharding.create_sharded(
        lambda: Decoder(cfg, rngs=nnx.Rngs(config.seed + (which == "teacher"))), mesh, rules)
    _log(f"[prepare] {which}: {cfg.num_params() / 1e6:.2f}M params")
    B = config.prep.batch_size
    lm_batch = lambda s: {"tokens": lm_rows[lm_data.batch_indices(len(lm_rows), B, s, config.seed)],
                          "mask": np.ones((B, lm_rows.shape[1]), np.int32)}
    fc = FitConfig(steps=config.prep.lm_steps, lr=config.prep.lm_lr,
                   warmup_steps=config.prep.warmup_steps, log_every=config.train.log_every,
                   ckpt_every=config.train.ckpt_every)
    params, m = fit(f"{which}_lm", workdir, graphdef, params, shardings, mesh, lm_batch, fc,
                    config.seed, _log)
    results[f"{which}_lm_loss"] = m.get("loss")
    measure(f"{which}_lm", graphdef, params)
    if which == "teacher":
      tokens, valid, loss = sft

      lengths = valid.sum(1)
      caps = lm_data.loss_caps(lengths, loss)

      def sft_batch(s):
        idx, w = lm_data.length_grouped_batch(lengths, B, s, config.seed + 7)
        return {"tokens": tokens[idx, :w], "mask": valid[idx, :w], "loss_mask": loss[idx, :w],
                "loss_idx": lm_data.loss_positions(loss[idx, :w], caps[w])}

      fc = FitConfig(steps=config.prep.sft_steps, lr=config.prep.sft_lr,
                     warmup_steps=config.prep.warmup_steps, log_every=config.train.log_every,
                     ckpt_every=config.train.ckpt_every)
      params, m = fit("teacher_sft", workdir, graphdef, params, shardings, mesh, sft_batch, fc,
                      config.seed, _log)
      results["teacher_sft_loss"] = m.get("loss")
      measure("teacher_sft", graphdef, params)
    models[which] = (cfg, graphdef, params, shardings)
    if jax.process_index() == 0 and not os.path.isfile(
        os.path.join(workdir, "models", which, "tokenizer.model")):  # HF-format copy: loadable by `ask`, `generate`, transformers
      hf_io.export_hf(os.path.join(workdir, "models", which), cfg, jax.device_get(params),
                      tokenizer_dir=None, extra_files={})
      shutil.copy(tok_prefix + ".model", os.path.join(workdir, "models", which,
                                                      "tokenizer.model"))
  if not fresh:  # a finished preparation: its evaluation is not repeated
    with open(done_f) as f:
      return json.load(f), models, tok, retriever
  dev = cli.read_jsonl(os.path.join(d, "dev.jsonl"))[:config.eval.num_questions]
  for which in ("teacher", "student"):
    cfg, graphdef, params, _ = models[which]
    summary, trajs = evaluate(cfg, graphdef, params, tok, retriever, config, dev)
    results[f"{which}_dev_em"] = summary
    _log(f"[prepare] {which} dev EM: {summary}")
  if jax.process_index() == 0:
    cli.write_json(done_f, results, indent=2)
  return results, models, tok, retriever


PREPARED = ("world", "tokenizer", "models/student", "models/teacher", "checkpoints/student_lm",
            "checkpoints/teacher_lm", "checkpoints/teacher_sft", "prepare_result.json", "tgo")


def copy_prepared(src: str, dst: str):
  """Copies what `prepare` and TGO left in `src` (world, tokenizer, pretrained and SFT'd
  models, the teacher's trajectories) into `dst`, so runs there start at KD/RL with the same
  inputs. Existing entries of `dst` are kept."""
  for rel in PREPARED:
    s, d = os.path.join(src, rel), os.path.join(dst, rel)
    if os.path.exists(d):
      continue
    if os.path.isdir(s):
      shutil.copytree(s, d)
    elif os.path.isfile(s):
      os.makedirs(os.path.dirname(d), exist_ok=True)
      shutil.copy(s, d)
