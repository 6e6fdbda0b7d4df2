"""Evaluation on QA files: EM (primary) and F1 per dataset, plus ARCap (docs/arcap.md).

Decoding is greedy, as the reference validates. Loading checkpoints against a config lives
in `pipeline/evaluate_stage.py`; this module only needs a model, a tokenizer and a retriever.
"""

import dataclasses
import json
import os
import time
from typing import Optional

import jax
import numpy as np

from dgpo_jax.data import corpus as corpus_lib
from dgpo_jax.eval import arcap
from dgpo_jax.eval.metrics import exact_match, token_f1
from dgpo_jax.models.sampler import SamplingParams
from dgpo_jax.parallel import distributed
from dgpo_jax.retrieval.retriever import Doc
from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine, Trajectory
from dgpo_jax.utils import cli, preemption
from dgpo_jax.utils.errors import fail

def params_from_state(state: dict, where: str) -> dict:
  """The policy params inside a saved train state (LM/KD: params; PPO: actor; GKD: policy)."""
  for path in (("params",), ("actor", "params"), ("policy", "params")):
    node = state
    for k in path:
      node = node.get(k) if isinstance(node, dict) else None
    if isinstance(node, dict):
      return node
  fail(f"{where}: no params in the checkpoint (top-level keys: {sorted(state)})")


def read_passages(corpus_path: str, ids: set) -> dict:
  """id → (title, text) for the wanted ids (one streaming pass over the corpus)."""
  out = {}
  if not ids or not corpus_path or not os.path.isfile(corpus_path):
    return out
  for p in corpus_lib.iter_corpus(corpus_path, skip_bad=True):
    if p.id in ids:
      out[p.id] = (p.title, p.text)
      if len(out) == len(ids):
        break
  return out


def rollouts(engine, questions, batch_size, contexts=None, rng_seed: int = 0,
             sp: SamplingParams = SamplingParams(greedy=True), label: str = "evaluate",
             partial: str = "", preemptible: bool = True):
  """Rollouts of QA rows in batches (greedy by default), with progress lines tagged
  `[label]`; one Trajectory per row, in order. With several processes each rolls out its
  share of the rows on its own devices and every process gets all the trajectories.

  Preemption (`utils.preemption`) is checked after every batch when `preemptible` (every
  process runs the same number of batches, so the check stays collective); the finished
  rows are then kept in `<partial>.p<process>.json`, when `partial` is given, and a rerun
  continues after them with the same results.
  """
  share = distributed.process_share(len(questions))
  mine = questions[share]
  most = -(-len(questions) // jax.process_count())  # the largest share
  n_batches = -(-most // batch_size)
  mine_f = f"{partial}.p{jax.process_index()}.json" if partial else ""
  first, out = _read_partial(mine_f, len(questions))
  t0, done0 = time.time(), len(out)
  for b in range(first, n_batches):
    s = b * batch_size
    if s < len(mine):
      ctx = None if contexts is None else contexts[share][s:s + batch_size]
      # keyed by the batch's global start, so the streams do not depend on the host count
      out += engine.run([q["question"] for q in mine[s:s + batch_size]],
                        jax.random.fold_in(jax.random.key(rng_seed), share.start + s), sp,
                        contexts=ctx)
      done = len(out)
      rate = (done - done0) / max(time.time() - t0, 1e-9)
      if jax.process_index() == 0:
        host = " (this host's share)" if len(mine) < len(questions) else ""
        print(f"[{label}]   {done}/{len(mine)} questions{host}, {rate:.2f} q/s, "
              f"ETA {(len(mine) - done) / max(rate, 1e-9):.0f} s", flush=True)
    if preemptible and b + 1 < n_batches and preemption.requested():
      if mine_f:
        cli.write_json(mine_f, {"batches": b + 1, "questions": len(questions),
                                "processes": jax.process_count(),
                                "rows": [dataclasses.asdict(t) for t in out]})
      preemption.stop(label, b + 1)
  if mine_f and os.path.isfile(mine_f):
    os.remove(mine_f)
  return distributed.allgather_objects(out)


def _read_partial(path: str, n: int) -> tuple:
  """(batches done, trajectories) kept by a preempted `rollouts` of the same `n` questions
  on as many processes, or (0, [])."""
  if not path or not os.path.isfile(path):
    return 0, []
  z = json.load(open(path))
  if (z.get("questions"), z.get("processes")) != (n, jax.process_count()):
    return 0, []  # another run's rows: start over
  return z["batches"], [Trajectory(**t) for t in z["rows"]]


def family_of(q: dict) -> Optional[str]:
  """A question's family: the synthetic world's `family`, else the dataset's `data_source`."""
  return q.get("family", q.get("data_source"))


def evaluate(graphdef, params, tok, retriever, rc: RolloutConfig, rows: list, batch_size: int,
             passages: Optional[dict] = None, rng_seed: int = 0, partial: str = "",
             preemptible: bool = True, label: str = "evaluate") -> tuple:
  """The evaluator every stage uses: greedy rollouts of `rows`, scored.

  Returns (figures, trajectories). figures, one schema everywhere (train's validations and
  test rows, the teacher's SFT checks, `evaluate`, tables, reports):
    n, em, f1, answered, searches_per_question: means over the rows;
    em_by_family: {family: EM} when rows carry a family (or a data_source);
    em_per_question: 0/1 per row, in order (paired comparisons, eval/stats.py);
    arcap: query and source capability; with `passages` (gold id → (title, text)) also
      Thinking EM, the answer with the gold passages in context and no search.
  `partial`, `preemptible`, `label`: as in `rollouts`.
  """
  engine = RolloutEngine.for_model(graphdef, params, tok, retriever, rc,
                                   [q["question"] for q in rows])
  trajs = rollouts(engine, rows, batch_size, rng_seed=rng_seed, partial=partial,
                   preemptible=preemptible, label=label)
  em = [exact_match(t.answer, q["golden_answers"]) for q, t in zip(rows, trajs)]
  out = {"n": len(rows), "em": float(np.mean(em)) if em else 0.0,
         "f1": float(np.mean([token_f1(t.answer, q["golden_answers"])
                              for q, t in zip(rows, trajs)])) if rows else 0.0,
         "answered": float(np.mean([t.answer is not None for t in trajs])) if trajs else 0.0,
         "searches_per_question": float(np.mean([t.num_searches for t in trajs]))
         if trajs else 0.0}
  fams = sorted({f for f in map(family_of, rows) if f is not None})
  if fams:
    out["em_by_family"] = {f: float(np.mean([e for q, e in zip(rows, em) if family_of(q) == f]))
                           for f in fams}
  out["em_per_question"] = em
  out["arcap"] = arcap.query_and_source(rows, trajs, tok)
  out["arcap"]["thinking_em"], out["arcap"]["thinking_n"] = (
      thinking(graphdef, params, tok, retriever, rc, rows, passages, batch_size,
               partial=partial and partial + "-thinking")
      if passages is not None else (None, 0))
  return out, trajs


HEADLINE = ("n", "em", "f1", "answered", "searches_per_question", "em_by_family")


def headline(figures: dict) -> dict:
  """The scalar part of `evaluate`'s figures (same keys), for validation records and logs."""
  return {k: figures[k] for k in HEADLINE if k in figures}


def read_history(path: str) -> list:
  """Validation records kept in `path` ([] when none); a record written before the one
  schema (EM under "avg") gets its "em"."""
  if not os.path.isfile(path):
    return []
  rows = json.load(open(path))
  for r in rows:
    if "em" not in r and "avg" in r:
      r["em"] = r["avg"]
  return rows


def thinking(graphdef, params, tok, retriever, rc: RolloutConfig, rows, passages: dict,
             batch_size: int, partial: str = "") -> tuple:
  """ARCap Thinking: (EM with the gold passages in context and no search, rows counted);
  (None, 0) when no row has gold passages."""
  gold = [arcap.gold_context(q, passages) for q in rows]
  have = [i for i, g in enumerate(gold) if g]
  if not have:
    return None, 0
  te = RolloutEngine.for_model(graphdef, params, tok, retriever,
                               dataclasses.replace(rc, max_turns=0),
                               [rows[i]["question"] for i in have], margin=rc.max_obs_tokens)
  ctx = [[Doc(f"gold{j}", title, text, 0.0) for j, (title, text) in enumerate(gold[i])]
         for i in have]
  if jax.process_index() == 0:
    print(f"[evaluate]   Thinking: {len(have)} questions with gold passages", flush=True)
  tt = rollouts(te, [rows[i] for i in have], batch_size, ctx, partial=partial)
  return float(np.mean([exact_match(t.answer, rows[i]["golden_answers"])
                        for i, t in zip(have, tt)])), len(have)


def markdown(results: dict) -> str:
  """Markdown tables: EM/F1 per dataset (+ average) and ARCap per dataset."""
  ds = results["datasets"]
  fmt = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"
  s = "| dataset | n | EM | F1 | answered |\n|---|---|---|---|---|\n"
  for name, r in ds.items():
    s += f"| {name} | {r['n']} | **{fmt(r['em'])}** | {fmt(r['f1'])} | {fmt(r['answered'])} |\n"
  s += (f"| average | {sum(r['n'] for r in ds.values())} | **{fmt(results['average']['em'])}**"
        f" | {fmt(results['average']['f1'])} | |\n")
  fams = sorted({f for r in ds.values() for f in r.get("em_by_family", {})})
  if fams:
    s += "\nEM per question family:\n\n| dataset | " + " | ".join(fams) + " |\n"
    s += "|---" * (len(fams) + 1) + "|\n"
    for name, r in ds.items():
      s += f"| {name} | " + " | ".join(fmt(r.get("em_by_family", {}).get(f)) for f in fams) + " |\n"
  s += ("\nARCap (docs/arcap.md):\n\n| dataset | Thinking EM (gold ctx) | hit ratio first | "
        "hit ratio all | searches/q | EM when gold retrieved | answer in retrieved |\n"
        "|---|---|---|---|---|---|---|\n")
  for name, r in ds.items():
    a = r["arcap"]
    think = fmt(a["thinking_em"]) + (f" (n={a['thinking_n']})" if a["thinking_em"] is not None
                                     else "")
    s += (f"| {name} | {think} | {fmt(a['hit_ratio_first'])} | {fmt(a['hit_ratio_all'])} | "
          f"{fmt(a['searches_per_question'], 2)} | {fmt(a['em_given_gold_retrieved'])} | "
          f"{fmt(a['answer_in_retrieved_share'])} |\n")
  return s


def average(datasets: dict) -> dict:
  """Unweighted mean over datasets (as the paper averages benchmarks)."""
  return {k: float(np.mean([r[k] for r in datasets.values()])) for k in ("em", "f1")}
