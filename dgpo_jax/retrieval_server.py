"""A Search-R1-compatible retrieval server over one of our indexes.

  python -m dgpo_jax.retrieval_server --index=DIR [--port=8000] [--host=127.0.0.1]

`POST /retrieve` with `{"queries": [...], "topk": 3, "return_scores": true}` answers
`{"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}` (without scores:
`{"result": [[{"id", "contents"}, ...], ...]}`), as Search-R1's own server does, so either side
can be swapped. `GET /health` answers `{"status": "ok", ...}`. Bad requests (malformed JSON,
too many queries, empty or over-long queries, bad topk, oversized bodies) get HTTP 400 with a
message; they never affect other requests. Binds to 127.0.0.1 unless told otherwise.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from absl import app, flags

MAX_BODY_BYTES = 1 << 20


class Limits:
  def __init__(self, max_queries=512, max_query_chars=2048, max_topk=50):
    self.max_queries, self.max_query_chars, self.max_topk = max_queries, max_query_chars, max_topk


def validate(payload, limits: Limits):
  """Returns (queries, topk, return_scores) or raises ValueError with the reason."""
  if not isinstance(payload, dict):
    raise ValueError("body must be a JSON object")
  queries = payload.get("queries")
  if not isinstance(queries, list) or not queries:
    raise ValueError("'queries' must be a non-empty list of strings")
  if len(queries) > limits.max_queries:
    raise ValueError(f"{len(queries)} queries in one request (limit {limits.max_queries})")
  for i, q in enumerate(queries):
    if not isinstance(q, str):
      raise ValueError(f"query {i} is not a string")
    if not q.strip():
      raise ValueError(f"query {i} is empty")
    if len(q) > limits.max_query_chars:
      raise ValueError(f"query {i} has {len(q)} characters (limit {limits.max_query_chars})")
  topk = payload.get("topk", 3)
  if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= limits.max_topk:
    raise ValueError(f"'topk' must be an integer in [1, {limits.max_topk}]")
  return queries, topk, bool(payload.get("return_scores", False))


def make_server(retriever, host="127.0.0.1", port=8000, limits: Limits = Limits(), quiet=True):
  """A ThreadingHTTPServer answering the Search-R1 contract (call serve_forever / shutdown)."""

  class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
      if not quiet:
        super().log_message(fmt, *args)

    def _send(self, code, obj):
      body = json.dumps(obj).encode("utf-8")
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def do_GET(self):
      if self.path == "/health":
        self._send(200, {"status": "ok", "kind": getattr(retriever, "kind", None),
                         "num_docs": len(retriever.docs) if hasattr(retriever, "docs") else None})
      else:
        self._send(404, {"error": f"no route GET {self.path}"})

    def do_POST(self):
      if self.path != "/retrieve":
        self._send(404, {"error": f"no route POST {self.path}"})
        return
      try:
        n = int(self.headers.get("Content-Length", "0"))
      except ValueError:
        n = -1
      if n < 0 or n > MAX_BODY_BYTES:
        self.close_connection = True
        self._send(400, {"error": f"body must have a Content-Length ≤ {MAX_BODY_BYTES} bytes"})
        return
      raw = self.rfile.read(n)
      try:
        payload = json.loads(raw.decode("utf-8"))
        queries, topk, with_scores = validate(payload, limits)
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        self._send(400, {"error": f"malformed JSON: {e}"})
        return
      except ValueError as e:
        self._send(400, {"error": str(e)})
        return
      try:
        results = retriever.retrieve(queries, topk)
      except Exception as e:  # one bad search must not kill the server thread silently
        self._send(500, {"error": f"{type(e).__name__}: {e}"})
        return
      out = []
      for docs in results:
        if with_scores:
          out.append([{"document": {"id": d.id, "contents": d.contents}, "score": d.score}
                      for d in docs])
        else:
          out.append([{"id": d.id, "contents": d.contents} for d in docs])
      self._send(200, {"result": out})

  return _Server((host, port), Handler)


class _Server(ThreadingHTTPServer):
  # socketserver's listen backlog of 5 overflows when a whole training step's workers connect
  # at once (the 32-client load test saw a connection reset); the kernel caps it anyway.
  request_queue_size = 1024
  daemon_threads = True


def serve_in_thread(retriever, host="127.0.0.1", port=0, limits: Limits = Limits()):
  """Starts a server on a background thread (`server.thread`); returns (server, url). For
  tests and the trainer."""
  server = make_server(retriever, host, port, limits)
  server.thread = threading.Thread(target=server.serve_forever, daemon=True)
  server.thread.start()
  return server, f"http://{host}:{server.server_address[1]}/retrieve"


flags.DEFINE_string("index", None, "Index directory (from `python -m dgpo_jax.index build`).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (127.0.0.1 unless told otherwise).")
flags.DEFINE_integer("port", 8000, "Port.")
flags.DEFINE_string("encoder_path", None, "HF directory of the index's encoder, if not offline.")
flags.DEFINE_integer("max_queries", 512, "Queries per request.")
flags.DEFINE_integer("max_query_chars", 2048, "Characters per query.")
flags.DEFINE_bool("verbose", False, "Log every request.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from dgpo_jax.retrieval.retriever import IndexRetriever
  from dgpo_jax.utils import cli
  from dgpo_jax.utils.errors import DgpoError
  cli.setup_logging()
  try:
    if not FLAGS.index:
      raise DgpoError("--index is required")
    retriever = IndexRetriever(FLAGS.index, encoder_path=FLAGS.encoder_path)
    server = make_server(retriever, FLAGS.host, FLAGS.port,
                         Limits(FLAGS.max_queries, FLAGS.max_query_chars), quiet=not FLAGS.verbose)
  except DgpoError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    print(f"error: cannot bind {FLAGS.host}:{FLAGS.port}: {e.strerror}", file=sys.stderr)
    sys.exit(2)
  print(f"[retrieval_server] {retriever.kind} index {FLAGS.index} ({len(retriever.docs)} docs) "
        f"on http://{FLAGS.host}:{FLAGS.port}/retrieve", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  app.run(main)
