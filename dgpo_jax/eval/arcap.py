"""ARCap: agentic-RAG capabilities measured from rollouts (definitions in docs/arcap.md).

  Thinking            EM with the gold supporting passages in the context and no search
                      (needs gold passages; see `gold_context`).
  Query Rewriting     hit ratio: share of searches whose retrieved documents contain a gold
                      answer (first search, all searches) and searches per question.
  Source Referencing  among questions where some retrieved document contains a gold answer,
                      the share answered correctly; and the share of given answers that
                      appear in the retrieved text.

"Contains" is judged after the reference EM normalization, on whole tokens, on exactly the
text the model was shown (the observation block after neutralizing and truncation).
"""

from typing import Optional, Sequence

import numpy as np

from dgpo_jax.eval.metrics import exact_match, normalize_answer


def contains(text: str, needles: Sequence[str]) -> bool:
  """Whether any needle occurs in text as a whole-token span, both EM-normalized."""
  hay = f" {normalize_answer(text)} "
  return any(n and f" {n} " in hay for n in (normalize_answer(x) for x in needles))


def observation_texts(traj, tok) -> list:
  """The decoded information blocks of a trajectory, one per search, in order (invalid-action
  messages are observations too, but carry no retrieved text)."""
  out = []
  for t in traj.turns:
    if t["kind"] == "observation":
      seg = tok.decode(traj.response_ids[t["start"]:t["end"]])
      if "<information>" in seg:
        out.append(seg)
  return out


def _mean(xs) -> Optional[float]:
  return float(np.mean(xs)) if len(xs) else None


def query_and_source(questions, trajs, tok) -> dict:
  """Query Rewriting and Source Referencing figures for one dataset."""
  first_hits, all_hits, n_search = [], [], []
  grounded_em, answer_in_docs = [], []
  for q, t in zip(questions, trajs):
    golds = q["golden_answers"]
    blocks = observation_texts(t, tok)
    hits = [contains(b, golds) for b in blocks]
    n_search.append(t.num_searches)
    if hits:
      first_hits.append(hits[0])
      all_hits.extend(hits)
    if any(hits):
      grounded_em.append(exact_match(t.answer, golds))
    if t.answer is not None and normalize_answer(t.answer):
      answer_in_docs.append(any(contains(b, [t.answer]) for b in blocks))
  return {
      "hit_ratio_first": _mean(first_hits),
      "hit_ratio_all": _mean(all_hits),
      "searches_per_question": _mean(n_search),
      "searched_share": _mean([n > 0 for n in n_search]),
      "em_given_gold_retrieved": _mean(grounded_em),
      "gold_retrieved_share": len(grounded_em) / max(len(trajs), 1),
      "answer_in_retrieved_share": _mean(answer_in_docs),
  }


def gold_context(row, passages: dict) -> Optional[list]:
  """The gold supporting passages of a QA row as [(title, text)], or None when unknown.

  A row may carry them itself (`gold_passages`: strings or {"title", "text"|"contents"}) or
  name them by id (`gold_ids`, looked up in `passages`: id → (title, text)).
  """
  if row.get("gold_passages"):
    out = []
    for p in row["gold_passages"]:
      if isinstance(p, str):
        title, _, text = p.partition("\n")
        out.append((title, text) if text else ("", p))
      elif isinstance(p, dict):
        out.append((str(p.get("title", "")), str(p.get("text", p.get("contents", "")))))
    return out or None
  ids = row.get("gold_ids")
  if ids and all(i in passages for i in ids):
    return [passages[i] for i in ids]
  return None

