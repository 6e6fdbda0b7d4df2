"""Search indexes over a corpus: ScaNN (tree + asymmetric hashing + reorder), exact, BM25.

An index directory holds `meta.json` (kind, encoder, sizes, parameters, measured recall),
`offsets.npy` (byte offset of every passage in the corpus file, which stays where it is:
documents are read back from it, never copied) and the searcher (`scann/`, `embeddings.npy`
or `bm25/`). Directories are built under a temporary name and renamed when complete, and
passage embeddings are computed in shards under `<out>.work/` so an interrupted build resumes.
"""

import dataclasses
import json
import math
import mmap
import os
import shutil
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np

from dgpo_jax.data.corpus import Passage, iter_records, split_contents
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import Progress

FORMAT = 1
EXACT_BELOW = 20_000  # auto mode: exact search below this many passages


# ---------------------------------------------------------------- corpus scanning
def scan_corpus(path: str, skip_bad: bool = False, stats: Optional[dict] = None
                ) -> Iterator[tuple[int, Passage]]:
  """Yields (byte offset, passage) of valid records; also rejects duplicate ids and an
  empty corpus (line numbers in errors)."""
  stats = stats if stats is not None else {}
  stats.update(read=0, skipped=0)
  seen: dict = {}
  for start, lineno, p in iter_records(path, skip_bad, stats):
    if p.id in seen:
      fail(f"{path}:{lineno}: duplicate passage id {p.id!r} (first at line {seen[p.id]})")
    seen[p.id] = lineno
    yield start, p
  if stats["read"] == 0:
    fail(f"{path}: corpus is empty (no valid passages)")


class DocStore:
  """Random access to passages by row, through the corpus file's byte offsets."""

  def __init__(self, corpus_path: str, offsets: np.ndarray, expect_size: Optional[int] = None):
    if not os.path.isfile(corpus_path):
      fail(f"index refers to corpus {corpus_path}, which does not exist")
    if expect_size is not None and os.path.getsize(corpus_path) != expect_size:
      fail(f"corpus {corpus_path} changed since the index was built (size "
           f"{os.path.getsize(corpus_path)} != {expect_size}); rebuild the index")
    self.path = corpus_path
    self.offsets = offsets
    self._fh = open(corpus_path, "rb")
    self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)

  def __len__(self):
    return len(self.offsets)

  def get(self, row: int) -> Passage:
    start = int(self.offsets[row])
    end = self._mm.find(b"\n", start)
    rec = json.loads(self._mm[start:end if end >= 0 else len(self._mm)].decode("utf-8"))
    title, text = split_contents(rec["contents"])
    return Passage(str(rec["id"]), title, text)


# ---------------------------------------------------------------- ScaNN
def scann_params(n: int, k: int = 3, **overrides) -> dict:
  """ScaNN parameters derived from the corpus size (leaves ≈ √n), any of them overridable."""
  leaves = max(2, int(round(math.sqrt(n))))
  p = {"num_leaves": leaves,
       "num_leaves_to_search": max(2, int(math.ceil(leaves * 0.2))),
       "training_sample_size": int(min(n, 250_000)),
       "dims_per_block": 2,
       "anisotropic_quantization_threshold": 0.2,
       "reorder": max(100, 20 * k)}
  for key, v in overrides.items():
    if v is not None:
      if key not in p:
        fail(f"unknown ScaNN parameter {key!r} (known: {', '.join(p)})")
      p[key] = v
  if p["num_leaves"] > n:
    fail(f"num_leaves={p['num_leaves']} exceeds the {n} passages")
  p["num_leaves_to_search"] = min(p["num_leaves_to_search"], p["num_leaves"])
  return p


def build_scann(emb: np.ndarray, k: int, p: dict):
  from scann import scann_ops_pybind
  return (scann_ops_pybind.builder(emb, k, "dot_product")
          .tree(p["num_leaves"], p["num_leaves_to_search"],
                training_sample_size=p["training_sample_size"])
          .score_ah(p["dims_per_block"],
                    anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"])
          .reorder(p["reorder"]).build())


def load_scann(directory: str):
  """Loads a serialized ScaNN searcher from wherever its directory now is.

  ScaNN writes absolute asset paths into scann_assets.pbtxt; we point them at `directory`
  so indexes survive the atomic rename after building and can be moved or copied.
  """
  import re
  from scann import scann_ops_pybind as sop
  assets = os.path.join(directory, "scann_assets.pbtxt")
  if not os.path.isfile(assets):
    fail(f"{directory}: no scann_assets.pbtxt (not a serialized ScaNN searcher)")
  with open(assets) as f:
    text = re.sub(r'asset_path: "([^"]*)"',
                  lambda m: f'asset_path: "{os.path.join(directory, os.path.basename(m.group(1)))}"',
                  f.read())
  return sop.ScannSearcher(sop.scann_pybind.ScannNumpy(directory, text), None)


def exact_search(emb: np.ndarray, queries: np.ndarray, k: int, block: int = 262_144):
  """Top-k rows by dot product: (rows [Q, k], scores [Q, k]), best first."""
  best_s = np.full((len(queries), 0), -np.inf, np.float32)
  best_i = np.zeros((len(queries), 0), np.int64)
  for s in range(0, len(emb), block):
    sc = queries @ emb[s:s + block].T
    kk = min(k, sc.shape[1])
    part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
    best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
    best_i = np.concatenate([best_i, part + s], 1)
    keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
    best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
  return best_i, best_s


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
  k = exact_rows.shape[1]
  hits = sum(len(set(a[:k]) & set(e)) for a, e in zip(approx_rows, exact_rows))
  return hits / exact_rows.size


def sample_queries(emb: np.ndarray, n: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
  """Embedding-like queries: random passages' vectors plus noise, renormalized."""
  rng = np.random.default_rng(seed)
  q = emb[rng.choice(len(emb), size=min(n, len(emb)), replace=False)]
  q = q + noise * rng.standard_normal(q.shape).astype(np.float32) / math.sqrt(q.shape[1])
  return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- build
@dataclasses.dataclass
class BuildOptions:
  kind: str = "auto"  # auto | scann | exact | bm25
  topk: int = 3
  skip_bad: bool = False
  shard_size: int = 50_000
  recall_queries: int = 500
  scann: dict = dataclasses.field(default_factory=dict)
  host_id: int = 0
  num_hosts: int = 1


def embed_corpus(corpus: str, encoder, work: str, opts: BuildOptions):
  """Streams the corpus, embeds it in shards (resumable), returns (offsets, embeddings).

  Shard j holds passages [j·S, (j+1)·S); host h embeds the shards with j % num_hosts == h,
  so the 21M-passage case splits over hosts sharing `work` on a common filesystem. Each
  shard file appears atomically; existing ones are skipped.
  """
  os.makedirs(work, exist_ok=True)
  stats: dict = {}
  offsets, texts, shard = [], [], 0
  prog = Progress("embed", 0, unit="passages")
  done_before = 0

  def flush():
    nonlocal shard, texts, done_before
    f = os.path.join(work, f"emb-{shard:05d}.npy")
    if shard % opts.num_hosts == opts.host_id and not os.path.isfile(f):
      emb = encoder.encode(texts, kind="passage")
      np.save(f + ".tmp.npy", emb)
      os.replace(f + ".tmp.npy", f)
      prog.update(len(texts), extra=f"shard {shard}")
    else:
      done_before += len(texts)
    shard, texts = shard + 1, []

  for off, p in scan_corpus(corpus, opts.skip_bad, stats):
    offsets.append(off)
    texts.append(p.contents)
    if len(texts) == opts.shard_size:
      flush()
  if texts:
    flush()
  if stats["skipped"]:
    print(f"[index] skipped {stats['skipped']} malformed lines", file=sys.stderr, flush=True)
  files = [os.path.join(work, f"emb-{j:05d}.npy") for j in range(shard)]
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    fail(f"{len(missing)} embedding shards are not written yet (other hosts still running?): "
         f"{missing[0]} ...")
  emb = np.concatenate([np.load(f) for f in files]).astype(np.float32)
  return np.asarray(offsets, np.int64), emb, stats


def build(corpus: str, out: str, encoder_name: str, encoder=None,
          opts: BuildOptions = BuildOptions()) -> dict:
  """Builds an index directory; returns its meta dict.

  The index appears at `out` only when complete; a failed build removes its temporary
  directory (embedding shards under `<out>.work/` are kept for the rerun).
  """
  corpus = os.path.abspath(corpus)
  if not os.path.isfile(corpus):
    fail(f"cannot open corpus {corpus}: no such file")
  tmp = out.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    return _build(corpus, out, tmp, encoder_name, encoder, opts)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _build(corpus, out, tmp, encoder_name, encoder, opts):
  t0 = time.time()
  meta = {"format": FORMAT, "encoder": encoder_name, "corpus": corpus,
          "corpus_size": os.path.getsize(corpus)}
  if encoder_name == "bm25":
    kind = "bm25"
    if opts.kind not in ("auto", "bm25"):
      fail(f"--kind={opts.kind} needs a dense encoder, not bm25")
    offsets, n = _build_bm25(corpus, tmp, opts)
    meta.update(num_docs=n)
  else:
    offsets, emb, stats = embed_corpus(corpus, encoder, out.rstrip("/") + ".work", opts)
    n = len(emb)
    kind = opts.kind if opts.kind != "auto" else ("exact" if n < EXACT_BELOW else "scann")
    if kind not in ("scann", "exact"):
      fail(f"--kind={kind} is not a dense index kind (scann, exact)")
    meta.update(num_docs=n, dim=int(emb.shape[1]), skipped_lines=stats["skipped"])
    np.save(os.path.join(tmp, "embeddings.npy"), emb)
    if kind == "scann":
      p = scann_params(n, opts.topk, **opts.scann)
      tb = time.time()
      searcher = build_scann(emb, opts.topk, p)
      meta["build_seconds_scann"] = time.time() - tb
      os.makedirs(os.path.join(tmp, "scann"))
      searcher.serialize(os.path.join(tmp, "scann"))
      q = sample_queries(emb, opts.recall_queries)
      exact_rows, _ = exact_search(emb, q, opts.topk)
      approx_rows, _ = searcher.search_batched(q, final_num_neighbors=opts.topk)
      meta.update(scann=p, recall_at_k=recall_at_k(np.asarray(approx_rows), exact_rows),
                  recall_k=opts.topk, recall_queries=len(q))
  meta.update(kind=kind, build_seconds=time.time() - t0, built_at=time.time())
  np.save(os.path.join(tmp, "offsets.npy"), offsets)
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  shutil.rmtree(out.rstrip("/") + ".work", ignore_errors=True)
  return meta


def bm25_tokenize(texts: Sequence[str]):
  import bm25s
  return bm25s.tokenize(list(texts), stopwords="en", show_progress=False)


def _build_bm25(corpus: str, tmp: str, opts: BuildOptions):
  import bm25s
  offsets, texts = [], []
  for off, p in scan_corpus(corpus, opts.skip_bad):
    offsets.append(off)
    texts.append(p.contents)
  retriever = bm25s.BM25()
  retriever.index(bm25_tokenize(texts), show_progress=False)
  retriever.save(os.path.join(tmp, "bm25"))
  return np.asarray(offsets, np.int64), len(texts)


def read_meta(index_dir: str) -> dict:
  f = os.path.join(index_dir, "meta.json")
  if not os.path.isfile(f):
    if os.path.isdir(index_dir.rstrip("/") + ".tmp"):
      fail(f"{index_dir}: index build did not finish (only {index_dir}.tmp exists)")
    fail(f"{index_dir}: not an index directory (no meta.json)")
  with open(f) as fh:
    meta = json.load(fh)
  if meta.get("format") != FORMAT:
    fail(f"{f}: index format {meta.get('format')} is not {FORMAT}; rebuild the index")
  return meta
