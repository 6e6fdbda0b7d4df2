"""Base skills of an LM-pretrained base model under variants of its pretraining data.

Issue 16 asks for base models that can copy a name and read a fact in context, as a
pretrained LM can, before any agentic training. This pretrains a fresh base model on a
prepared world's LM documents (`prepare.lm_documents`: passages of training subjects and
drills), optionally with extra copy drills, and measures teacher-forced greedy next-token
accuracy on:
  copy, reading      the run's own probe (`eval/probe.py`, held-out entities);
  copy_fresh         "Names: A, B. Again: A, B." over new syllable names of no entity;
  copy_syllables     a string of 12-24 lowercase syllables, then the same string again.

  python -m benchmarks.base_skills --workdir=DIR [--which=student] [--steps=300] \
      [--extra=0] [--kind=names|syllables] [--out=FILE]

DIR is a prepared run of configs/synthetic.py (its world/ and tokenizer/). One XLA:CPU
thread. The diagnosis it serves, and the exploratory figures that preceded it:
docs/synthetic.md ("Base skills: why the base models cannot copy").
"""

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import emit


def fresh_name(rng, syllables, taken) -> str:
  while True:
    name = " ".join("".join(rng.choice(syllables, int(rng.integers(2, 4)))).capitalize()
                    for _ in range(int(rng.integers(1, 3))))
    if name not in taken:
      return name


def drills(kind, n, rng, syllables, taken) -> list:
  """`n` copy drills as text: name lists (`names`) or syllable strings (`syllables`)."""
  out = []
  for _ in range(n):
    if kind == "syllables":
      s = " ".join(rng.choice(syllables, int(rng.integers(12, 25))))
      out.append(f"{s}. {s}.")
    else:
      names = ", ".join(fresh_name(rng, syllables, taken) for _ in range(int(rng.integers(4, 10))))
      out.append(f"Names: {names}. Again: {names}.")
  return out


def drill_items(tok, rng, syllables, taken, n=50) -> dict:
  """Scored copy items in the two drill formats (held out: drawn after the training ones)."""
  from dgpo_jax.eval import probe
  names, syl = [], []
  for _ in range(n):
    pick = [fresh_name(rng, syllables, taken) for _ in range(int(rng.integers(4, 8)))]
    names.append(probe.copy_item(tok, pick))
    s = " ".join(rng.choice(syllables, int(rng.integers(12, 25))))
    syl.append(probe.concat(tok, [(s + ".", False), (" " + s, True), (".", False)]))
  return {"copy_fresh": names, "copy_syllables": syl}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--which", default="student", choices=("student", "teacher"))
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--extra", type=int, default=0, help="extra copy drills")
  ap.add_argument("--kind", default="names", choices=("names", "syllables"))
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)
  os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  import jax
  from flax import nnx

  from configs import synthetic
  from dgpo_jax.data import lm_data, synthetic_world
  from dgpo_jax.eval import probe
  from dgpo_jax.models.decoder import Decoder
  from dgpo_jax.models.tokenizer import SentencePieceTokenizer
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import prepare
  from dgpo_jax.train.loop import FitConfig, fit
  from dgpo_jax.train.step import Model
  c = synthetic.get_config()
  world_dir = os.path.join(a.workdir, "world")
  spm = sorted(glob.glob(os.path.join(a.workdir, "tokenizer", "*.model")))
  if not spm or not os.path.isdir(world_dir):
    sys.exit(f"{a.workdir}: no world/ or tokenizer/ (run configs/synthetic.py there first)")
  tok = SentencePieceTokenizer(spm[0], chat_format="plain")
  seed = prepare.world_seed(c)
  w = c.world
  world = synthetic_world.generate(seed, w.n_countries, w.n_cities, w.n_orgs, w.n_people,
                                   w.n_works)
  taken = {e["name"] for k in ("countries", "cities", "orgs", "people", "works")
           for e in getattr(world, k)}
  rng = np.random.default_rng(7)
  docs = prepare.lm_documents(c, world_dir, tok, seed)
  docs += [tok.encode(t) for t in drills(a.kind, a.extra, rng, synthetic_world.SYLLABLES, taken)]
  docs = [docs[i] for i in np.random.default_rng(1).permutation(len(docs))]
  rows = lm_data.pack(docs, c.data.seq_len, tok.eos_ids[0])
  mesh = sharding.make_mesh("data:1", devices=jax.devices()[:1])
  cfg = prepare.model_cfg(c, a.which, tok)
  gd, params, sh = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)), mesh, ())
  B = c.prep.batch_size
  fc = FitConfig(steps=a.steps, lr=c.prep.lm_lr, warmup_steps=c.prep.warmup_steps,
                 log_every=100, ckpt_every=10 ** 9)
  name = f"{a.which}-{a.steps}-{a.kind}{a.extra}"
  t0 = time.time()
  scratch = tempfile.mkdtemp(prefix="base_skills_")  # always trained afresh, never resumed
  params, m = fit(name, scratch, Model(cfg, gd, params, sh, tok), mesh,
                  lambda s: {"tokens": rows[lm_data.batch_indices(len(rows), B, s, seed)],
                             "mask": np.ones((B, rows.shape[1]), np.int32)},
                  fc, seed, lambda msg: print(msg, file=sys.stderr, flush=True))
  items = dict(probe.items(world_dir, tok, n=c.prep.probe_items, seed=seed),
               **drill_items(tok, np.random.default_rng(123), synthetic_world.SYLLABLES, taken))
  acc = probe.accuracy(gd, params, items, tok.pad_id)
  shutil.rmtree(scratch, ignore_errors=True)
  emit({"benchmark": "base_skills", "workdir": a.workdir, "which": a.which,
        "params": cfg.num_params(), "steps": a.steps, "extra_drills": a.extra, "kind": a.kind,
        "lm_rows": int(len(rows)), "final_loss": m.get("loss"),
        "train_s": round(time.time() - t0, 1),
        **{k: round(v, 3) for k, v in acc.items() if not k.endswith("_exact")}}, a.out)


if __name__ == "__main__":
  main()
