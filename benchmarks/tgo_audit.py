"""Audit of a TGO set: per question family, how many of the teacher's correct trajectories
restate the gold facts in their reasoning (the rest are right by luck).

    python -m benchmarks.tgo_audit --workdir=DIR [--out=...]

DIR is a synthetic workdir whose TGO covered the whole training split (`tgo/<key>/`).
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

from benchmarks.common import emit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  sys.path.insert(0, ROOT)
  from dgpo_jax.eval import probe
  from dgpo_jax.models.tokenizer import SentencePieceTokenizer
  w = a.workdir
  tok = SentencePieceTokenizer(glob.glob(os.path.join(w, "tokenizer", "*.model"))[0],
                               chat_format="plain")
  f = glob.glob(os.path.join(w, "tgo", "*", "tgo_all.npz"))[0]
  z = np.load(f)
  with open(os.path.join(w, "world", "train.jsonl")) as g:
    qs = [json.loads(l) for l in g if l.strip()][:len(z["score"])]
  texts = [tok.decode([int(t) for t, m in zip(row, gen) if m])
           for row, gen in zip(z["tokens"], z["gen"])]
  emit({"benchmark": "tgo_audit", "tgo": f,
        "families": probe.restated_gold_facts(texts, qs, z["score"])}, a.out)


if __name__ == "__main__":
  main()
