"""Teacher SFT from a prepared workdir's LM checkpoint, with the recipe varied: does a
learning rate, weight decay or a longer schedule make an init cross the step threshold at
which the agentic skill appears (issue "Students that learn")?

    python -m benchmarks.teacher_sft --workdir=WORKDIR --name=NAME [--variant=] [--init=teacher_lm]
        [--lr=3e-3] [--weight_decay=0] [--steps=600] [--evals=200,400,600] [--dev=100]
        [--set=k=v ...] [--out=benchmarks/results/teacher_sft_NAME.json]

WORKDIR is a synthetic workdir after `prepare` (its world, tokenizer, demonstrations and
`checkpoints/<init>`; `--set` repeats the world overrides it was prepared with). The SFT runs
in WORKDIR/teacher_sft_bench/NAME with the default's batch and warmup, the cosine schedule
over `--steps`, and reports greedy dev EM and the training loss at each of `--evals` steps.
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

from benchmarks.common import emit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--name", required=True)
  ap.add_argument("--variant", default="", help="configs/synthetic.py variant of the workdir")
  ap.add_argument("--init", default="teacher_lm", help="a checkpoint in WORKDIR/checkpoints")
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--weight_decay", type=float, default=0.0)
  ap.add_argument("--steps", type=int, default=600)
  ap.add_argument("--evals", default="200,400,600")
  ap.add_argument("--dev", type=int, default=100)
  ap.add_argument("--set", action="append", default=[], help="a config override k=v")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  sys.path.insert(0, ROOT)
  from flax import nnx

  from configs import synthetic
  from dgpo_jax.eval import evaluate as evaluation
  from dgpo_jax.models.decoder import Decoder
  from dgpo_jax.models.tokenizer import SentencePieceTokenizer
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import prepare, setup
  from dgpo_jax.retrieval.retriever import IndexRetriever
  from dgpo_jax.train.loop import FitConfig, fit
  from dgpo_jax.train.step import Model
  from dgpo_jax.utils import cli

  c = synthetic.get_config(a.variant)
  for kv in a.set:
    key, val = kv.split("=", 1)
    sec, _, name = key.rpartition(".")
    (c[sec] if sec else c)[name] = type((c[sec] if sec else c)[name])(val)
  w = a.workdir
  tok = SentencePieceTokenizer(glob.glob(os.path.join(w, "tokenizer", "*.model"))[0],
                               chat_format="plain")
  retriever = IndexRetriever(os.path.join(w, "world", "index_bm25"))
  mesh = sharding.make_mesh("")
  cfg = prepare.model_cfg(c, "teacher", tok)
  gd, params, sh = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh,
                                           setup.rules(c))
  dummy = lambda s: {"tokens": np.zeros((c.prep.batch_size, 2), np.int32),
                     "mask": np.ones((c.prep.batch_size, 2), np.int32)}
  params, _ = fit(a.init, w, Model(cfg, gd, params, sh), mesh, dummy,
                  FitConfig(steps=c.prep.lm_steps, lr=c.prep.lm_lr), 0, lambda m: None)
  # the pipeline's own demonstrations and batches for this config (built if the workdir
  # holds none for it, e.g. with another `prep.sft_renamed`)
  train_q = cli.read_jsonl(os.path.join(w, "world", "train.jsonl"))[:c.prep.sft_examples]
  seed = prepare.world_seed(c)
  batch = prepare.sft_batches(c, prepare.demonstrations(c, w, tok, retriever, train_q), seed)

  dev = cli.read_jsonl(os.path.join(w, "world", "dev.jsonl"))[:a.dev]
  out_dir = os.path.join(w, "teacher_sft_bench", a.name)
  out = {"benchmark": "teacher_sft", "workdir": w, "init": a.init, "lr": a.lr,
         "weight_decay": a.weight_decay, "schedule_steps": a.steps,
         "dev_questions": len(dev), "evals": []}
  for k in sorted(int(x) for x in a.evals.split(",")):
    t = time.time()
    fc = FitConfig(steps=k, schedule_steps=a.steps, lr=a.lr, weight_decay=a.weight_decay,
                   warmup_steps=c.prep.warmup_steps, log_every=50, ckpt_every=k)
    params, m = fit("teacher_sft", out_dir, Model(cfg, gd, params, sh), mesh, batch, fc, seed,
                    lambda msg: None)
    summary = evaluation.headline(
        prepare.evaluate(Model(cfg, gd, params, sh, tok), retriever, c, dev)[0])
    out["evals"].append({"step": k, "loss": m.get("loss"), "dev_em": summary,
                         "wall_s": round(time.time() - t, 1)})
    print(json.dumps(out["evals"][-1]), file=sys.stderr, flush=True)
  emit(out, a.out)


if __name__ == "__main__":
  main()
