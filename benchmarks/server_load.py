"""The retrieval server under load: many concurrent clients on 127.0.0.1. Prints JSON.

    python -m benchmarks.server_load [--clients=32] [--requests=200] [--bad_every=10]

Builds (or reuses) a BM25 index of the real Wikipedia sample, serves it on a free port, and
runs `clients` threads, each sending `requests` requests on its own keep-alive connection;
every `bad_every`-th request of a client is malformed (broken JSON, empty query, bad topk,
too many queries) and must get HTTP 400 while the well-formed ones all get 200 with topk
documents. Reports failures, p50/p99/max latency of good requests, requests/s, and whether
the server shut down cleanly (its port closed, its thread ended).
"""

import argparse
import http.client
import json
import os
import socket
import threading
import time

import numpy as np

from benchmarks.common import emit

WIKI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                    "data", "flashrag-sample", "corpus.jsonl")
BAD = [b"{not json", json.dumps({"queries": ["  "]}).encode(),
       json.dumps({"queries": ["a"], "topk": 0}).encode(),
       json.dumps({"queries": ["a"] * 600}).encode(), json.dumps({"queries": "a"}).encode()]
WORDS = ("Evan Morris lobbyist Genentech capital France river Paris film novel war king "
         "university football album song election president city").split()


def _client(port, n, bad_every, seed, out, deadline):
  rng = np.random.default_rng(seed)
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  lat, fails, bad_ok, bad_sent = [], [], 0, 0
  for i in range(n):
    if time.time() > deadline:
      fails.append("deadline passed")
      break
    bad = bad_every and (i % bad_every == bad_every - 1)
    body = BAD[(seed + i) % len(BAD)] if bad else json.dumps(
        {"queries": [" ".join(rng.choice(WORDS, 3))], "topk": 3}).encode()
    t0 = time.perf_counter()
    try:
      conn.request("POST", "/retrieve", body, {"Content-Type": "application/json"})
      resp = conn.getresponse()
      payload = json.loads(resp.read())
    except (OSError, http.client.HTTPException, ValueError) as e:
      fails.append(f"{type(e).__name__}: {e}")
      conn.close()
      conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
      continue
    dt = time.perf_counter() - t0
    if bad:
      bad_sent += 1
      if resp.status == 400 and "error" in payload:
        bad_ok += 1
      else:
        fails.append(f"malformed request answered {resp.status}")
    elif resp.status != 200 or len(payload.get("result", [[]])[0]) != 3:
      fails.append(f"status {resp.status}: {str(payload)[:200]}")
    else:
      lat.append(dt)
  conn.close()
  out.append({"lat": lat, "fails": fails, "bad_ok": bad_ok, "bad_sent": bad_sent})


def run(index_dir, clients=32, requests=200, bad_every=10, time_cap_s=300.0) -> dict:
  from dgpo_jax.retrieval.retriever import IndexRetriever
  from dgpo_jax.retrieval_server import serve_in_thread
  server, url = serve_in_thread(IndexRetriever(index_dir))
  port = server.server_address[1]
  thread = server.thread
  out, threads = [], []
  deadline = time.time() + time_cap_s
  t0 = time.perf_counter()
  for c in range(clients):
    th = threading.Thread(target=_client, args=(port, requests, bad_every, c, out, deadline))
    th.start()
    threads.append(th)
  for th in threads:
    th.join()
  wall = time.perf_counter() - t0
  server.shutdown()
  server.server_close()
  thread.join(timeout=5)
  with socket.socket() as s:
    closed = s.connect_ex(("127.0.0.1", port)) != 0
  lat = np.array([x for o in out for x in o["lat"]]) * 1e3
  fails = [f for o in out for f in o["fails"]]
  return {
      "clients": clients, "requests_per_client": requests, "bad_every": bad_every,
      "good_requests_ok": int(lat.size), "malformed_sent": sum(o["bad_sent"] for o in out),
      "malformed_answered_400": sum(o["bad_ok"] for o in out), "failed": len(fails),
      "failures": fails[:5], "wall_s": round(wall, 2),
      "requests_per_s": round(clients * requests / wall, 1),
      "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                     "p99": round(float(np.percentile(lat, 99)), 2),
                     "max": round(float(lat.max()), 2)} if lat.size else None,
      "clean_shutdown": bool(closed and not thread.is_alive()),
  }


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--clients", type=int, default=32)
  ap.add_argument("--requests", type=int, default=200)
  ap.add_argument("--bad_every", type=int, default=10)
  ap.add_argument("--index", default="/tmp/dgpo_bench/bm25_wiki")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  from dgpo_jax.retrieval import index as index_lib
  if not os.path.isfile(os.path.join(a.index, "meta.json")):
    index_lib.build(WIKI, a.index, "bm25")
  res = run(a.index, a.clients, a.requests, a.bad_every)
  res["machine"] = {"cpus": os.cpu_count()}
  emit(res, a.out)


if __name__ == "__main__":
  main()
