"""How much distinct agentic data a base model needs: SFT on oracle demonstrations of all
training questions vs of only the questions the teacher's TGO got right, from one init.

    python -m benchmarks.sft_data --workdir=KD_SANITY_DIR/same_shape [--steps=276]
        [--dev=100] [--out=benchmarks/results/sft_data_cpu.json]

WORKDIR is a finished run of `benchmarks.kd_sanity` (its same-shape student: the teacher's
shape, the student's LM pretraining) or any synthetic workdir with `tgo/`. Each arm starts
from that workdir's `student_lm` checkpoint, runs `--steps` SFT steps (the teacher's SFT
recipe: batch, lr, warmup) on its rows, and reports greedy dev EM at half and all of the
steps. Compared with the KD run of the same workdir (same init, same TGO, about as many
steps), it separates "the KD path is wrong" from "the TGO set is too small".
"""

import argparse
import glob
import os
import sys

import numpy as np

from benchmarks.common import emit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=276)
  ap.add_argument("--dev", type=int, default=100)
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  sys.path.insert(0, ROOT)
  from flax import nnx

  from configs import synthetic
  from dgpo_jax.data import lm_data
  from dgpo_jax.eval import evaluate as evaluation
  from dgpo_jax.models.decoder import Decoder
  from dgpo_jax.models.tokenizer import SentencePieceTokenizer
  from dgpo_jax.parallel import sharding
  from dgpo_jax.pipeline import prepare, setup
  from dgpo_jax.retrieval.retriever import IndexRetriever
  from dgpo_jax.train.loop import FitConfig, fit
  from dgpo_jax.train.step import Model
  from dgpo_jax.utils import cli

  c = synthetic.get_config()
  for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
    c.student[k] = c.teacher[k]
  w = a.workdir
  tok = SentencePieceTokenizer(glob.glob(os.path.join(w, "tokenizer", "*.model"))[0],
                               chat_format="plain")
  retriever = IndexRetriever(os.path.join(w, "world", "index_bm25"))
  mesh, rules = sharding.make_mesh(""), setup.rules(c)
  cfg = prepare.model_cfg(c, "student", tok)
  p = c.prep
  sft = np.load(glob.glob(os.path.join(w, "world", "sft_*.npz"))[0])
  tgo = np.load(glob.glob(os.path.join(w, "tgo", "*", "tgo_all.npz"))[0])
  n_train = len(tgo["score"])  # TGO on the whole split: row i is training question i
  rows = {"oracle_all": np.arange(min(n_train, len(sft["tokens"]))),
          "oracle_tgo_correct": np.nonzero(tgo["score"] > 0)[0]}
  dev = cli.read_jsonl(os.path.join(w, "world", "dev.jsonl"))[:a.dev]
  out = {"benchmark": "sft_data", "workdir": w, "steps": a.steps, "dev_questions": len(dev),
         "arms": {}}
  for arm, keep in rows.items():
    gd, params, sh = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(c.seed)),
                                             mesh, rules)
    lm_fc = FitConfig(steps=p.lm_steps, lr=p.lm_lr, warmup_steps=p.warmup_steps)
    dummy = lambda s: {"tokens": np.zeros((p.batch_size, 2), np.int32),
                       "mask": np.ones((p.batch_size, 2), np.int32)}
    params, _ = fit("student_lm", w, Model(cfg, gd, params, sh), mesh, dummy, lm_fc,
                    c.seed, lambda m: None)
    batch = lm_data.masked_batches(*(sft[k][keep] for k in ("tokens", "mask", "loss_mask")),
                                   p.batch_size, c.seed + 7)

    res = {"rows": int(len(keep))}
    for steps in (a.steps // 2, a.steps):
      fc = FitConfig(steps=steps, schedule_steps=a.steps, lr=p.sft_lr,
                     warmup_steps=p.warmup_steps, log_every=50, ckpt_every=a.steps // 2)
      params, m = fit(f"sft_data_{arm}", w, Model(cfg, gd, params, sh), mesh, batch, fc,
                      c.seed, print)
      summary = evaluation.headline(
          prepare.evaluate(Model(cfg, gd, params, sh, tok), retriever, c, dev)[0])
      res[f"step{steps}"] = {"loss": m.get("loss"), "dev_em": summary}
      print(f"[sft_data] {arm} step {steps}: dev EM {summary['em']:.3f}", flush=True)
    out["arms"][arm] = res
  emit(out, a.out)


if __name__ == "__main__":
  main()
