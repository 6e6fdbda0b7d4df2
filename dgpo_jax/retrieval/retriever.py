"""The agent's search tool: batched host-side `retrieve(queries, topk)`.

`IndexRetriever` searches a local index directory; `HttpRetriever` speaks Search-R1's
retrieval-server contract (ours in `dgpo_jax.retrieval_server`, or theirs). Both return, per
query, a list of `Doc(id, title, text, score)`, best first; `format_information` renders
them exactly as the reference does.
"""

import dataclasses
import json
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Optional, Sequence

import numpy as np

from dgpo_jax.retrieval import index as index_lib
from dgpo_jax.utils.errors import DgpoError, fail

MAX_QUERY_CHARS = 2048


class RetrieverError(DgpoError):
  """The retriever could not answer (unreachable server, bad response)."""


@dataclasses.dataclass(frozen=True)
class Doc:
  id: str
  title: str
  text: str
  score: float

  @property
  def contents(self) -> str:
    return f"{self.title}\n{self.text}"


def format_information(docs: Sequence[Doc]) -> str:
  """The reference's passage block: one `Doc {i}(Title: {title}) {text}` line per document.

  Retrieved text is untrusted; the rollout neutralizes tags in it before it reaches the
  model (this function renders, it does not sanitize).
  """
  return "".join(f"Doc {i + 1}(Title: {d.title}) {d.text}\n" for i, d in enumerate(docs))


def check_queries(queries: Sequence[str], max_chars: int = MAX_QUERY_CHARS):
  """Raises DgpoError naming the first empty / over-long / non-string query."""
  for i, q in enumerate(queries):
    if not isinstance(q, str):
      fail(f"query {i} is {type(q).__name__}, expected a string")
    if not q.strip():
      fail(f"query {i} is empty")
    if len(q) > max_chars:
      fail(f"query {i} has {len(q)} characters (limit {max_chars})")


class Retriever:
  def retrieve(self, queries: Sequence[str], topk: int = 3) -> list[list[Doc]]:
    raise NotImplementedError


class IndexRetriever(Retriever):
  """Searches an index directory built by `dgpo_jax.index build`.

  Args:
    index_dir: the index.
    encoder: a loaded `Encoder` (dense kinds); loaded from the index's meta if None.
    encoder_name: when given, must match the encoder the index was built with.
  """

  def __init__(self, index_dir: str, encoder=None, encoder_name: Optional[str] = None,
               encoder_path: Optional[str] = None):
    self.meta = index_lib.read_meta(index_dir)
    built_with = self.meta["encoder"]
    asked = encoder_name or (encoder.name if encoder is not None else None)
    if asked and asked != built_with:
      fail(f"{index_dir} was built with encoder {built_with!r}, but {asked!r} was asked for")
    self.kind = self.meta["kind"]
    self.docs = index_lib.DocStore(self.meta["corpus"],
                                   np.load(os.path.join(index_dir, "offsets.npy")),
                                   self.meta.get("corpus_size"))
    self._lock = threading.Lock()  # searchers are shared by server threads
    if self.kind == "bm25":
      import bm25s
      self.bm25 = bm25s.BM25.load(os.path.join(index_dir, "bm25"))
      self.encoder = None
    else:
      if encoder is None:
        from dgpo_jax.retrieval.encoder import Encoder
        encoder = Encoder(built_with, encoder_path)
      if encoder.dim != self.meta["dim"]:
        fail(f"{index_dir}: index dim {self.meta['dim']} != encoder dim {encoder.dim}")
      self.encoder = encoder
      if self.kind == "scann":
        self.searcher = index_lib.load_scann(os.path.join(index_dir, "scann"))
      else:
        self.emb = np.load(os.path.join(index_dir, "embeddings.npy"), mmap_mode="r")

  def search_rows(self, queries: Sequence[str], topk: int):
    """(rows [Q, k], scores [Q, k]) without fetching documents."""
    check_queries(queries)
    topk = min(int(topk), len(self.docs))
    if topk < 1:
      fail(f"topk must be ≥ 1, got {topk}")
    with self._lock:
      if self.kind == "bm25":
        res, scores = self.bm25.retrieve(index_lib.bm25_tokenize(queries), k=topk,
                                         show_progress=False, n_threads=1)
        return np.asarray(res), np.asarray(scores)
      q = self.encoder.encode(list(queries), kind="query")
      if self.kind == "scann":
        rows, scores = self.searcher.search_batched(q, final_num_neighbors=topk)
        return np.asarray(rows), np.asarray(scores)
      return index_lib.exact_search(np.asarray(self.emb), q, topk)

  def retrieve(self, queries, topk=3):
    rows, scores = self.search_rows(queries, topk)
    out = []
    for r_row, s_row in zip(rows, scores):
      docs = []
      for r, s in zip(r_row, s_row):
        p = self.docs.get(int(r))
        docs.append(Doc(p.id, p.title, p.text, float(s)))
      out.append(docs)
    return out


class HttpRetriever(Retriever):
  """Client of a Search-R1-compatible server (`POST {url}` with queries/topk/return_scores).

  Args:
    url: e.g. http://127.0.0.1:8000/retrieve
    timeout_s: per attempt.
    retries: extra attempts after the first, with exponential backoff from `backoff_s`.
  """

  def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 2, backoff_s: float = 0.5):
    self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s

  def retrieve(self, queries, topk=3):
    check_queries(queries)
    body = json.dumps({"queries": list(queries), "topk": int(topk),
                       "return_scores": True}).encode()
    last = None
    for attempt in range(self.retries + 1):
      req = urllib.request.Request(self.url, data=body,
                                   headers={"Content-Type": "application/json"})
      try:
        with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
          payload = json.loads(r.read().decode("utf-8"))
        return self._parse(payload, len(queries))
      except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:300]
        if 400 <= e.code < 500:  # our request is wrong: retrying will not help
          raise RetrieverError(f"retrieval server {self.url} rejected the request "
                               f"(HTTP {e.code}): {detail}") from None
        last = f"HTTP {e.code}: {detail}"
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
      if attempt < self.retries:
        time.sleep(self.backoff_s * (2 ** attempt))
    raise RetrieverError(f"retrieval server {self.url} unreachable after "
                         f"{self.retries + 1} attempts ({last})")

  def _parse(self, payload, n):
    try:
      result = payload["result"]
      if len(result) != n:
        raise ValueError(f"{len(result)} result lists for {n} queries")
      out = []
      for row in result:
        docs = []
        for item in row:
          doc, score = (item["document"], item.get("score", 0.0)) if "document" in item else (
              item, 0.0)
          title, _, text = doc["contents"].partition("\n")
          docs.append(Doc(str(doc.get("id", "")), title, text, float(score)))
        out.append(docs)
      return out
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise RetrieverError(f"retrieval server {self.url} sent an unexpected response: {e}") \
          from None
