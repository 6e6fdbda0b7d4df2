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

from dgpo_jax.data import corpus, lm_data
from dgpo_jax.data import synthetic_world
from dgpo_jax.eval import evaluate as evaluation
from dgpo_jax.eval import probe
from dgpo_jax.models import config as model_config
from dgpo_jax.models import hf_io
from dgpo_jax.models.decoder import Decoder
from dgpo_jax.models.tokenizer import SentencePieceTokenizer
from dgpo_jax.parallel import sharding
from dgpo_jax.pipeline import setup
from dgpo_jax.retrieval import index as index_lib
from dgpo_jax.retrieval.retriever import Doc, IndexRetriever
from dgpo_jax.rollout import text as rollout_text
from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine
from dgpo_jax.train.loop import FitConfig, fit, fit_update
from dgpo_jax.train.step import Model
from dgpo_jax.utils import cli
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import log


def world_seed(config) -> int:
  """The seed of the world and of all that `prepare` makes from it (tokenizer, base models,
  teacher, TGO): `world.seed`, or the run's `seed` when that is negative. Runs with other
  training seeds (`seed`) can then share one prepared world."""
  s = config.world.get("seed", -1) if "world" in config else -1
  return config.seed if s < 0 else s


def build_world(config, workdir):
  w, ws = config.world, world_seed(config)
  d = os.path.join(workdir, "world")
  meta_f = os.path.join(d, "meta.json")
  if not os.path.isfile(os.path.join(d, "test.jsonl")):
    world = synthetic_world.generate(ws, w.n_countries, w.n_cities, w.n_orgs, w.n_people, w.n_works)
    counts = synthetic_world.write(world, d + ".tmp", ws,
                                   (w.get("train_frac", 0.8), w.get("dev_frac", 0.1)))
    cli.write_json(os.path.join(d + ".tmp", "meta.json"), {"seed": ws, "counts": counts})
    os.replace(d + ".tmp", d) if not os.path.exists(d) else None
    log(f"[prepare] world: {counts}")
  elif os.path.isfile(meta_f):
    held = json.load(open(meta_f))["seed"]
    if held != ws:
      fail(f"{d} holds the world of seed {held}, this run asks for seed {ws} "
               f"(config.seed={config.seed}, config.world.seed={w.get('seed', -1)}): use "
               f"another workdir for another world, or --config.world.seed={held} to train "
               f"with seed {config.seed} on this one")
  return d


def demonstrations(config, workdir, tok, retriever, questions):
  """Oracle trajectories as (tokens, loss_mask) rows; observations from the real retriever.

  `prep.sft_renamed` = K > 0 adds K copies of each demonstration in which the question's
  named entities carry fresh names (`synthetic_world.renaming`), in the question, the
  reasoning, the queries, the answer and the retrieved passages alike: the teacher then has
  to copy a name it has never read into its query and read the facts from the passage, as it
  must for a held-out subject, instead of recalling a training subject it was pretrained on.

  Cached under a name that hashes what shapes the rows (vocabulary, rollout limits, the
  observation text around a fixed sample, the copies), so a change of format builds them
  again instead of reusing stale rows."""
  copies = config.prep.get("sft_renamed", 0)
  if not isinstance(copies, int) or copies < 0:
    fail(f"config.prep.sft_renamed: {copies!r} is not a number of copies (an int ≥ 0)")
  engine = RolloutEngine(None, tok, retriever, RolloutConfig.from_config(config))
  sample = engine.observation_ids([Doc("0", '"T"', "A sample passage.", 1.0)])
  key = zlib.crc32(json.dumps([tok.vocab_size, dataclasses.asdict(engine.cfg), sample,
                               len(questions)] + ([copies] if copies else [])).encode())
  out_f = os.path.join(workdir, "world", f"sft_{tok.vocab_size}_{key:08x}.npz")
  if os.path.isfile(out_f):
    z = np.load(out_f)
    return z["tokens"], z["mask"], z["loss_mask"]
  rng = np.random.default_rng(world_seed(config) + 11)
  taken = _name_words(os.path.join(workdir, "world", "corpus.jsonl")) if copies else set()
  items = [(q, {}) for q in questions] + [
      (q, synthetic_world.renaming(q, rng, taken)) for _ in range(copies) for q in questions]
  rows = _oracle_rows(engine, retriever, config.retrieval.topk, items)
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


def _name_words(corpus_path: str) -> set:
  """The words of every passage title (entity name) of a synthetic corpus."""
  return {w for p in corpus.iter_corpus(corpus_path) for w in p.title.strip('"').split()}


def _oracle_rows(engine, retriever, topk, items) -> list:
  """(prompt ids, response ids, response loss mask) of the oracle's trajectory for each
  (question, renaming) item, hop by hop with one batched retrieval per hop; a renaming
  rewrites every text, retrieval included, after the real (original) query is answered."""
  tok = engine.tok
  steps = [synthetic_world.oracle_steps(q) for q, _ in items]
  rows = [(engine.prompt_ids(synthetic_world.rename(q["question"], names)), [], [])
          for q, names in items]
  for hop in range(max(len(s) for s in steps)):
    pending = [i for i, s in enumerate(steps) if hop < len(s)]
    queries = [steps[i][hop][2] for i in pending if steps[i][hop][0] == "search"]
    docs = iter(retriever.retrieve(queries, topk)) if queries else iter(())
    for i in pending:
      kind, think, payload = steps[i][hop]
      names, (_, ids, mask) = items[i][1], rows[i]
      gen = tok.encode(synthetic_world.rename(
          f"<think> {think} </think>\n<{kind}> {payload} </{kind}>", names))
      if kind == "answer":
        gen = gen + [tok.eos_ids[0]]
      ids += gen
      mask += [1] * len(gen)
      if kind == "search":
        found = [Doc(d.id, synthetic_world.rename(d.title, names),
                     synthetic_world.rename(d.text, names), d.score) for d in next(docs)]
        obs = engine.observation_ids(found)
        ids += obs
        mask += [0] * len(obs)
  return rows


def other_world_seeds(config) -> list:
  """Seeds of the worlds whose text pretrains the base models when `prep.lm_worlds` > 0:
  drawn from the world seed, never a seed a run's own world uses (those are small)."""
  return [1_000_000 + 100 * world_seed(config) + k for k in range(config.prep.lm_worlds)]


def lm_documents(config, world_dir, tok, ws) -> list:
  """Token documents of the base models' LM pretraining, shuffled.

  `prep.lm_worlds` = 0: this world's passages of training subjects (held-out subjects left
  out) and its drills. > 0: the passages and drills of that many other worlds of the same
  size and none of this world's text, so the base models know how facts are written but
  no fact of this world; then neither they nor SFT/KD on training questions can answer from
  memory, as the paper's base models cannot answer most training questions (docs/synthetic.md).
  """
  if config.prep.get("lm_worlds", 0) > 0:
    w = config.world
    texts = []
    for seed in other_world_seeds(config):
      other = synthetic_world.generate(seed, w.n_countries, w.n_cities, w.n_orgs, w.n_people,
                                       w.n_works)
      texts += [text for _, _, text in other.passages()]
      if config.prep.drills:
        texts += synthetic_world.reading_drills(other, set(), seed)
  else:
    texts = [l.strip() for l in open(os.path.join(world_dir, "pretrain.txt"))]
    drills = os.path.join(world_dir, "drills.jsonl")
    if config.prep.drills and os.path.isfile(drills):
      texts += [r["text"] for r in cli.read_jsonl(drills)]
  docs = [tok.encode(t) for t in texts]
  return [docs[i] for i in np.random.default_rng(ws).permutation(len(docs))]


def sft_batches(config, sft, ws):
  """`step -> batch` of the teacher's SFT over the demonstrations `sft` (tokens, mask,
  loss mask) of world seed `ws`."""
  return lm_data.masked_batches(*sft, config.prep.batch_size, ws + 7,
                                multiple=config.data.width_multiple)


def sft_teacher(config, workdir, graphdef, params, shardings, mesh, sft, ws, validate):
  """The teacher's SFT on the oracle demonstrations: the environment's teacher, not a method
  under test, so its checkpoint may be chosen on dev, as a trained teacher would be.

  With `prep.sft_target_em` > 0 the SFT runs in chunks: after `prep.sft_min_steps` steps
  and every `prep.sft_val_every` after, greedy dev EM (`validate(params)`); the first chunk
  that reaches the target ends it. `prep.sft_steps` is the most it runs (the schedule spans
  it either way). The validations are kept in `eval/teacher_sft_val.json` (a resumed run
  reads them back). Returns (params, last metrics with "steps").
  """
  p = config.prep
  sft_batch = sft_batches(config, sft, ws)
  target = p.get("sft_target_em", 0.0)
  ends = [p.sft_steps]
  if target > 0:
    first, every = p.get("sft_min_steps", p.sft_steps), max(1, p.get("sft_val_every", 200))
    ends = sorted({*range(min(first, p.sft_steps), p.sft_steps, every), p.sft_steps})
  val_f = os.path.join(workdir, "eval", "teacher_sft_val.json")
  history = evaluation.read_history(val_f)
  m, built = {}, None
  for k, end in enumerate(ends):
    fc = FitConfig(steps=end, schedule_steps=p.sft_steps, lr=p.sft_lr,
                   warmup_steps=p.warmup_steps, log_every=config.train.log_every,
                   ckpt_every=min(config.train.ckpt_every, end))
    model = Model(None, graphdef, params, shardings)
    built = built or fit_update("teacher_sft", model, mesh, fc, sft_batch(0))
    params, m = fit("teacher_sft", workdir, model, mesh, sft_batch, fc, ws, log, built=built)
    m = dict(m, steps=end)
    if target <= 0:
      break
    if len(history) <= k:
      history.append({"step": end, **evaluation.headline(validate(params))})
      if jax.process_index() == 0:
        cli.write_json(val_f, history, indent=2)
      log(f"[teacher_sft] step {end}: dev EM {history[k]['em']:.3f} (target {target})")
    if history[k]["em"] >= target:
      break
  return params, m


def model_cfg(config, which, tok):
  # head_dim stays the tiny-llama preset's 16 whatever d_model is: attention is 4 × 16 = 64
  # wide in every synthetic model (narrower than a 128-wide teacher, wider than a 48-wide
  # student). Every recorded synthetic result has this shape, so it is kept.
  m = config[which]
  return model_config.preset("tiny-llama", d_model=m.d_model, n_layers=m.n_layers,
                             n_heads=m.n_heads, n_kv_heads=m.n_kv_heads, d_ff=m.d_ff,
                             vocab_size=tok.vocab_size, eos_ids=tok.eos_ids, pad_id=tok.pad_id,
                             bos_id=tok.bos_id, max_seq_len=4096, scan_unroll=m.n_layers,
                             attn_chunk=m.attn_chunk, attn_impl=m.get("attn_impl", "xla"))


def evaluate(model: Model, retriever, config, questions, **kw) -> tuple:
  """`eval.evaluate.evaluate` of `model` (with its tokenizer) on `questions`, as the
  config's rollout and eval sections say; `kw` as there."""
  return evaluation.evaluate(model.graphdef, model.params, model.tokenizer, retriever,
                             RolloutConfig.from_config(config), questions,
                             config.eval.batch_size, **kw)


def world_tokenizer(config, world_dir: str, prefix: str) -> SentencePieceTokenizer:
  """The world's SentencePiece tokenizer (trained once, cached at `prefix`): on the training
  subjects' passages, the prompt and the oracle's action traces, so the action tags and the
  reasoning's phrasing are pieces; `tokenizer.max_piece_length` caps a piece's length."""
  if not os.path.isfile(prefix + ".model"):
    train = cli.read_jsonl(os.path.join(world_dir, "train.jsonl"))
    texts = [l.strip() for l in open(os.path.join(world_dir, "pretrain.txt"))]
    texts += [rollout_text.PROMPT, rollout_text.INVALID_ACTION] + [
        " ".join(f"<think> {th} </think> <{k}> {p} </{k}>"
                 for k, th, p in synthetic_world.oracle_steps(q))
        for q in train[:2000]]
    lm_data.train_sentencepiece(texts, prefix, config.tokenizer.vocab_size,
                                max_piece_length=config.tokenizer.get("max_piece_length", 0))
  return SentencePieceTokenizer(prefix + ".model", chat_format="plain")


def run(config, workdir):
  """Prepares world, tokenizer, index, and the pretrained student and SFT'd teacher.
  Returns (results, {"student": Model, "teacher": Model}, tokenizer, retriever)."""
  d = build_world(config, workdir)
  ws = world_seed(config)
  tok_prefix = lm_data.spm_prefix(workdir, config.tokenizer)
  tok = world_tokenizer(config, d, tok_prefix)
  index_dir = os.path.join(d, "index_bm25")
  if not os.path.isfile(os.path.join(index_dir, "meta.json")):
    index_lib.build(os.path.join(d, "corpus.jsonl"), index_dir, "bm25")
  retriever = IndexRetriever(index_dir)
  mesh = sharding.make_mesh(config.mesh)
  rules = setup.rules(config)
  train_q = cli.read_jsonl(os.path.join(d, "train.jsonl"))[:config.prep.sft_examples]
  sft = demonstrations(config, workdir, tok, retriever, train_q)
  docs = lm_documents(config, d, tok, ws)
  eos = tok.eos_ids[0]
  lm_rows = lm_data.pack(docs, config.data.seq_len, eos)
  results = {}
  models = {}
  done_f = os.path.join(workdir, "prepare_result.json")
  fresh = not os.path.isfile(done_f)
  probe_items = probe.items(d, tok, n=config.prep.probe_items, seed=ws) if fresh else {}

  def measure(key, graphdef, params):  # base skills, once per preparation
    if fresh:
      results.setdefault("probe", {})[key] = probe.accuracy(graphdef, params, probe_items,
                                                            tok.pad_id)
      log(f"[prepare] {key} probe: {results['probe'][key]}")

  for which in ("student", "teacher"):
    cfg = model_cfg(config, which, tok)
    graphdef, params, shardings = sharding.create_sharded(
        lambda: Decoder(cfg, rngs=nnx.Rngs(ws + (which == "teacher"))), mesh, rules)
    log(f"[prepare] {which}: {cfg.num_params() / 1e6:.2f}M params")
    B = config.prep.batch_size
    lm_batch = lambda s: {"tokens": lm_rows[lm_data.batch_indices(len(lm_rows), B, s, ws)],
                          "mask": np.ones((B, lm_rows.shape[1]), np.int32)}
    fc = FitConfig(steps=config.prep.lm_steps, lr=config.prep.lm_lr,
                   warmup_steps=config.prep.warmup_steps, log_every=config.train.log_every,
                   ckpt_every=config.train.ckpt_every)
    params, m = fit(f"{which}_lm", workdir, Model(cfg, graphdef, params, shardings), mesh,
                    lm_batch, fc, ws, log)
    results[f"{which}_lm_loss"] = m.get("loss")
    measure(f"{which}_lm", graphdef, params)
    if which == "teacher":
      dev_q = cli.read_jsonl(os.path.join(d, "dev.jsonl"))
      validate = lambda p: evaluate(Model(cfg, graphdef, p, shardings, tok), retriever, config,
                                    dev_q[:config.prep.get("sft_val_questions", 100)],
                                    label="validate")[0]
      params, m = sft_teacher(config, workdir, graphdef, params, shardings, mesh, sft, ws,
                              validate)
      results["teacher_sft_loss"] = m.get("loss")
      results["teacher_sft_steps"] = m.get("steps")
      measure("teacher_sft", graphdef, params)
    models[which] = Model(cfg, graphdef, params, shardings, tok)
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
    summary = evaluation.headline(evaluate(models[which], retriever, config, dev)[0])
    results[f"{which}_dev_em"] = summary
    log(f"[prepare] {which} dev EM: {summary}")
  if jax.process_index() == 0:
    cli.write_json(done_f, results, indent=2)
  return results, models, tok, retriever


PREPARED = ("world", "tokenizer", "models/student", "models/teacher", "checkpoints/student_lm",
            "checkpoints/teacher_lm", "checkpoints/teacher_sft", "eval/teacher_sft_val.json",
            "prepare_result.json", "tgo")


def copy_prepared(src: str, dst: str, rels=PREPARED):
  """Copies what `prepare` and TGO left in `src` (world, tokenizer, pretrained and SFT'd
  models, the teacher's trajectories; or only the entries `rels`) into `dst`, so runs there
  start at KD/RL with the same inputs. Existing entries of `dst` are kept."""
  for rel in rels:
    s, d = os.path.join(src, rel), os.path.join(dst, rel)
    if os.path.exists(d):
      continue
    if os.path.isdir(s):
      shutil.copytree(s, d)
    elif os.path.isfile(s):
      os.makedirs(os.path.dirname(d), exist_ok=True)
      shutil.copy(s, d)
