"""The retrieval server as a hostile client meets it: every request gets an HTTP answer
(400/404/405/411/413 with a one-line reason), disconnects cost one log line and no traceback,
and the server keeps serving."""

import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgpo_jax.retrieval.retriever import Doc
from dgpo_jax.retrieval_server import MAX_BODY_BYTES, serve_in_thread


class _Echo:
  kind, docs = "echo", ["d"] * 3

  def retrieve(self, queries, topk):
    return [[Doc(f"{q}-{i}", q, "x" * 2000, 1.0 / (i + 1)) for i in range(topk)]
            for q in queries]


@pytest.fixture(scope="module")
def server():
  srv, url = serve_in_thread(_Echo())
  yield srv.server_address[1]
  srv.shutdown()
  srv.server_close()


def _exchange(port, raw: bytes, timeout=10.0) -> bytes:
  """Sends `raw` on a fresh connection and reads until the server closes or answers."""
  with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
    s.sendall(raw)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
      chunk = s.recv(1 << 16)
      if not chunk:
        return out
      out += chunk


def _status(resp: bytes) -> int:
  assert resp.startswith(b"HTTP/1."), resp[:200]
  return int(resp.split(b" ", 2)[1])


def _json(resp: bytes) -> dict:
  return json.loads(resp.split(b"\r\n\r\n", 1)[1])


def _post(path, body: bytes, headers=()):
  head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers,
          "Connection: close"]
  return ("\r\n".join(head) + "\r\n\r\n").encode() + body


CASES = [  # (what, raw request, expected status, words in the error)
    ("deeply nested JSON", _post("/retrieve", b"[" * 200_000), 400, "nested too deeply"),
    ("nested objects", _post("/retrieve", b'{"a":' * 100_000), 400, "nested too deeply"),
    ("broken JSON", _post("/retrieve", b"{not json"), 400, "malformed JSON"),
    ("invalid UTF-8", _post("/retrieve", b'{"queries": ["\xff\xfe"]}'), 400, "malformed JSON"),
    ("wrong field type", _post("/retrieve", b'{"queries": "a"}'), 400, "non-empty list"),
    ("empty body", _post("/retrieve", b""), 400, "malformed JSON"),
    ("negative length", b"POST /retrieve HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400,
     "Content-Length"),
    ("chunked body", b"POST /retrieve HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", 411, "Content-Length"),
    ("oversized body", _post("/retrieve", b"x" * (MAX_BODY_BYTES + 5)), 413, "over the limit"),
    ("unknown path", _post("/search", b"{}"), 404, "no route"),
    ("GET unknown", b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n", 404, "no route"),
    ("PUT /retrieve", b"PUT /retrieve HTTP/1.1\r\nContent-Length: 0\r\nConnection: close"
     b"\r\n\r\n", 405, "use POST"),
    ("DELETE /health", b"DELETE /health HTTP/1.1\r\nConnection: close\r\n\r\n", 405, "use GET"),
    ("GET /retrieve", b"GET /retrieve HTTP/1.1\r\nConnection: close\r\n\r\n", 405, "use POST"),
]


@pytest.mark.parametrize("what,raw,code,words", CASES, ids=[c[0] for c in CASES])
def test_every_bad_request_gets_an_http_answer(server, capsys, what, raw, code, words):
  resp = _exchange(server, raw)
  assert _status(resp) == code, (what, resp[:300])
  assert words in _json(resp)["error"], (what, resp[:300])
  assert "Traceback" not in capsys.readouterr().err
  ok = _exchange(server, _post("/retrieve", b'{"queries": ["a"], "topk": 2}'))
  assert _status(ok) == 200 and len(_json(ok)["result"][0]) == 2  # still serving


def test_405_names_the_allowed_method(server):
  resp = _exchange(server, b"PUT /retrieve HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
  assert b"\r\nAllow: POST\r\n" in resp


def test_disconnects_cost_one_line_and_no_traceback(server, capsys):
  # mid-request: headers promise 1,000 bytes, 10 arrive, the client leaves
  with socket.create_connection(("127.0.0.1", server)) as s:
    s.sendall(b"POST /retrieve HTTP/1.1\r\nContent-Length: 1000\r\n\r\n0123456789")
  # mid-response: a large answer, then a reset before reading it
  big = json.dumps({"queries": [f"q{i}" for i in range(400)], "topk": 50}).encode()
  for _ in range(3):
    s = socket.create_connection(("127.0.0.1", server))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(_post("/retrieve", big))
    time.sleep(0.05)
    s.close()  # SO_LINGER 0: RST while the server writes ~40 MB
  time.sleep(1.0)
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = [l for l in err.splitlines() if l.strip()]
  assert lines and all(l.startswith("[retrieval_server]") and "client disconnected" in l
                       for l in lines), lines
  assert any("body ended after 10 of 1000 bytes" in l for l in lines)
  ok = _exchange(server, _post("/retrieve", b'{"queries": ["a"]}'))
  assert _status(ok) == 200


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                     max_size=3),
                 max_leaves=30).map(lambda v: json.dumps({"queries": v}).encode()),
    st.integers(1, 5000).map(lambda d: b"[" * d + b"]" * d)))
def test_random_bodies_always_get_200_or_400(server, capsys, body):
  resp = _exchange(server, _post("/retrieve", body))
  code = _status(resp)
  assert code in (200, 400), resp[:300]
  if code == 400:
    assert "\n" not in _json(resp)["error"]
  assert "Traceback" not in capsys.readouterr().err
