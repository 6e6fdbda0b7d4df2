"""Base-skill probes: what a pretrained LM can do before any agentic training.

The paper's students are pretrained LMs that can already read and copy; only the agentic
behaviour (think, search, answer) is missing. These probes measure the two skills on
held-out entities of the synthetic world (subjects of dev/test questions, whose passages
were never in the pretraining text), as teacher-forced greedy next-token accuracy:

  copy     "Names: A, B, C. Again: A, B, C."  scored on the name tokens of the second list.
  reading  three passages in the retrieval-block format (the subject's and two others),
           then one of the subject's facts restated; scored on the fact's answer tokens
           (the entity or number a question would ask for).

Each item is (token ids, score mask); `accuracy` runs one forward per batch.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgpo_jax.retrieval.retriever import Doc, format_information
from dgpo_jax.utils.cli import read_jsonl


def concat(tok, segments):
  """Segments (text, scored) → (ids, mask) for the joined text, tokenized whole as the
  model reads it; a token is scored when it lies inside a scored segment (found by
  tokenizing the text up to each segment's ends: pieces never cross a space)."""
  text = "".join(t for t, _ in segments)
  ids = tok.encode(text)
  mask = [0] * len(ids)
  at = 0
  for t, scored in segments:
    if scored:
      lo, hi = len(tok.encode(text[:at])), len(tok.encode(text[:at + len(t)]))
      mask[lo:hi] = [1] * (hi - lo)
    at += len(t)
  return ids, mask


def copy_item(tok, names) -> tuple:
  """The copy probe's item: "Names: A, B, C. Again: A, B, C.", scored on the second list's
  name tokens."""
  segs = [(f"Names: {', '.join(names)}. Again:", False)]
  for k, nm in enumerate(names):
    segs += [(f" {nm}", True), ("," if k + 1 < len(names) else ".", False)]
  return concat(tok, segs)


def items(world_dir: str, tok, n: int = 100, seed: int = 0) -> dict:
  """{"copy": [(ids, mask)], "reading": [(ids, mask)]} built from held-out entities."""
  rng = np.random.default_rng(seed + 101)
  corpus = {r["id"]: r["contents"] for r in read_jsonl(os.path.join(world_dir, "corpus.jsonl"))}
  held = [q for s in ("dev", "test") for q in read_jsonl(os.path.join(world_dir, f"{s}.jsonl"))]
  subjects = sorted({q["gold_ids"][0] for q in held if q.get("gold_ids")})
  title = lambda i: corpus[i].split("\n", 1)[0].strip('"')
  names = [title(i) for i in subjects]
  copy = []
  for _ in range(n):
    pick = [names[int(j)] for j in rng.choice(len(names), size=int(rng.integers(4, 8)),
                                                replace=False)]
    copy.append(copy_item(tok, pick))
  ids = list(corpus)
  reading = []
  singles = [q for q in held if q["family"] == "single_hop"]
  for j in rng.permutation(len(singles))[:n]:
    q = singles[int(j)]
    gold, (_, fact) = q["gold_ids"][0], q["hops"][0]
    answer = q["golden_answers"][0]
    cut = fact.rfind(answer)
    if cut < 0:
      continue
    docs = [gold] + [ids[int(k)] for k in rng.choice(len(ids), size=2, replace=False)]
    docs = [docs[k] for k in rng.permutation(3)]
    block = format_information([Doc(d, f'"{title(d)}"', corpus[d].split("\n", 1)[1], 0.0)
                                for d in docs])
    reading.append(concat(tok, [(block + fact[:cut].rstrip(), False),
                                 (" " + answer, True), (fact[cut + len(answer):], False)]))
  return {"copy": copy, "reading": reading}


@functools.partial(jax.jit, static_argnums=0)
def _predict(graphdef, params, tokens_bt, valid_bt):
  """Greedy next-token ids; jitted once per (model, shape), not once per `accuracy` call."""
  logits_btv, _ = nnx.merge(graphdef, params)(tokens_bt, valid_bt=valid_bt)
  return jnp.argmax(logits_btv, axis=-1)


def accuracy(graphdef, params, probe_items: dict, pad_id: int, batch_size: int = 32) -> dict:
  """Greedy next-token accuracy on the scored tokens, per probe, plus `<probe>_exact` (the
  share of items whose every scored token is right)."""

  out = {}
  for name, rows in probe_items.items():
    if not rows:
      continue
    width = -(-max(len(r) for r, _ in rows) // 64) * 64
    hits = total = exact = 0
    for s in range(0, len(rows), batch_size):
      chunk = rows[s:s + batch_size]
      tokens = np.full((batch_size, width), pad_id, np.int32)
      valid = np.zeros_like(tokens)
      mask = np.zeros_like(tokens)
      for i, (r, m) in enumerate(chunk):
        tokens[i, :len(r)], valid[i, :len(r)], mask[i, :len(m)] = r, 1, m
      pred = np.asarray(_predict(graphdef, params, tokens, valid))
      # Position t predicts token t + 1: a scored token at t + 1 is right when pred[t] is it.
      ok = (pred[:, :-1] == tokens[:, 1:]) | (mask[:, 1:] == 0)
      scored = mask[:, 1:] == 1
      hits += int((ok & scored).sum())
      total += int(scored.sum())
      exact += int(ok[:len(chunk)].all(axis=1).sum())
    out[name] = hits / max(total, 1)
    out[f"{name}_exact"] = exact / len(rows)
  return out


def restated_gold_facts(texts, questions, scores) -> dict:
  """Per question family: {"n", "correct", "correct_restating"}: how many trajectories
  scored right, and how many of those restate every gold fact of the question (its oracle
  hops' sentences) somewhere in their generated text. A correct answer whose reasoning does
  not restate the facts is a lucky guess (e.g. picking one of two names in a comparison).

  texts: each trajectory's generated text (observations excluded); questions with `hops`.
  """
  out = {}
  for text, q, s in zip(texts, questions, scores):
    row = out.setdefault(q.get("family", "all"), {"n": 0, "correct": 0, "correct_restating": 0})
    row["n"] += 1
    if s > 0:
      row["correct"] += 1
      row["correct_restating"] += int(all(f in text for _, f in q.get("hops") or []))
  return out
