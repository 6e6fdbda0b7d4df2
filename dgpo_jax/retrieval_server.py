"""A Search-R1-compatible retrieval server over one of our indexes.

  python -m dgpo_jax.retrieval_server --index=DIR [--port=8000] [--host=127.0.0.1]

`POST /retrieve` with `{"queries": [...], "topk": 3, "return_scores": true}` answers
`{"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}` (without scores:
`{"result": [[{"id", "contents"}, ...], ...]}`), as Search-R1's own server does, so either side
can be swapped. `GET /health` answers `{"status": "ok", ...}`. Binds to 127.0.0.1 unless told
otherwise.

Every request gets an HTTP answer with a one-line JSON `error`: malformed or too deeply nested
JSON and bad fields (too many, empty or over-long queries, bad topk) → 400; a body over
MAX_BODY_BYTES → 413 (the body read and dropped first, then the connection closed); no
Content-Length → 411; unknown paths → 404; other methods on a known path → 405. A client
that disconnects mid-request or mid-response costs one log line; the server keeps serving.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from absl import app, flags

MAX_BODY_BYTES = 1 << 20
DRAIN_BYTES = 64 << 20  # an oversized body up to this is read and dropped before the 413
IDLE_TIMEOUT_S = 120


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


ROUTES = {"/retrieve": "POST", "/health": "GET"}


def _doc_json(d, with_scores: bool) -> dict:
  """One retrieved document in the Search-R1 answer's two shapes."""
  if with_scores:
    return {"document": {"id": d.id, "contents": d.contents}, "score": d.score}
  return {"id": d.id, "contents": d.contents}


class SearchHandler(BaseHTTPRequestHandler):
  """The Search-R1 contract over HTTP/1.1; `make_server` binds `retriever`, `limits` and
  `quiet`."""
  retriever = None
  limits = Limits()
  quiet = True
  protocol_version = "HTTP/1.1"
  timeout = IDLE_TIMEOUT_S  # a stalled or idle connection is closed, its thread freed

  def log_message(self, fmt, *args):
    if not self.quiet:
      super().log_message(fmt, *args)

  def _send(self, code, obj, close=False, headers=()):
    body = json.dumps(obj).encode("utf-8")
    if close:
      self.close_connection = True
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    for k, v in headers:
      self.send_header(k, v)
    if close:
      self.send_header("Connection", "close")
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _route(self) -> bool:
    """Answers 404/405 unless the request's path and method are served; True if served."""
    path = urlsplit(self.path).path
    if path not in ROUTES:
      self._send(404, {"error": f"no route {self.path[:200]}"})
      return False
    if self.command != ROUTES[path]:
      self._send(405, {"error": f"{self.command} {path}: use {ROUTES[path]}"},
                 headers=[("Allow", ROUTES[path])])
      return False
    return True

  def __getattr__(self, name):  # any other method (PUT, DELETE, HEAD, ...): 404 or 405
    if name.startswith("do_"):
      return self._route
    raise AttributeError(name)

  def do_GET(self):
    if self._route():
      r = self.retriever
      self._send(200, {"status": "ok", "kind": getattr(r, "kind", None),
                       "num_docs": len(r.docs) if hasattr(r, "docs") else None})

  def do_POST(self):
    if not self._route():
      return
    raw = self._body()
    if raw is None:
      return
    try:
      payload = json.loads(raw.decode("utf-8"))
      queries, topk, with_scores = validate(payload, self.limits)
    except RecursionError:
      self._send(400, {"error": "malformed JSON: nested too deeply"})
      return
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      self._send(400, {"error": f"malformed JSON: {e}"})
      return
    except ValueError as e:
      self._send(400, {"error": str(e)})
      return
    try:
      results = self.retriever.retrieve(queries, topk)
    except Exception as e:  # one bad search must not kill the server thread silently
      self._send(500, {"error": f"{type(e).__name__}: {e}"})
      return
    self._send(200, {"result": [[_doc_json(d, with_scores) for d in docs] for docs in results]})

  def _body(self):
    """The request body, or None once an error has been answered (length missing, bad or
    over MAX_BODY_BYTES: read and discarded up to DRAIN_BYTES so the client sees the
    answer rather than a reset, then the connection is closed)."""
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      self._send(411, {"error": "send a Content-Length (chunked bodies are not accepted)"},
                 close=True)
      return None
    try:
      n = int(self.headers.get("Content-Length", "0"))
    except ValueError:
      n = -1
    if n < 0:
      self._send(400, {"error": "Content-Length must be a non-negative integer"}, close=True)
      return None
    if n > MAX_BODY_BYTES:
      left = n if n <= DRAIN_BYTES else 0
      while left > 0:
        chunk = self.rfile.read(min(left, 1 << 16))
        if not chunk:
          break
        left -= len(chunk)
      self._send(413, {"error": f"body of {n} bytes is over the limit of {MAX_BODY_BYTES}"},
                 close=True)
      return None
    raw = self.rfile.read(n)
    if len(raw) < n:  # the client went away mid-body: nobody to answer
      self.close_connection = True
      raise ConnectionResetError(f"body ended after {len(raw)} of {n} bytes")
    return raw


def make_server(retriever, host="127.0.0.1", port=8000, limits: Limits = Limits(), quiet=True):
  """A ThreadingHTTPServer answering the Search-R1 contract (call serve_forever / shutdown)."""
  handler = type("Handler", (SearchHandler,), dict(retriever=retriever, limits=limits,
                                                   quiet=quiet))
  return _Server((host, port), handler)


class _Server(ThreadingHTTPServer):
  # socketserver's listen backlog of 5 overflows when a whole training step's workers connect
  # at once (the 32-client load test saw a connection reset); the kernel caps it anyway.
  request_queue_size = 1024
  daemon_threads = True

  def handle_error(self, request, client_address):
    """One line per failed connection (a client that went away, a stalled one, a bug),
    never a traceback; the server keeps serving."""
    e = sys.exc_info()[1]
    who = f"{client_address[0]}:{client_address[1]}" if isinstance(client_address, tuple) else ""
    what = ("client disconnected" if isinstance(e, (ConnectionError, TimeoutError))
            else "request failed")
    print(f"[retrieval_server] {who}: {what} ({type(e).__name__}: {e})", file=sys.stderr,
          flush=True)


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
