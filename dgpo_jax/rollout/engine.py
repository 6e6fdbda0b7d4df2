"""Batched multi-turn agentic rollout: think → search → read → answer.

The turn loop lives on the host; every generation segment is one jitted decode over a live
KV cache. A turn ends at `</search>`, `</answer>` or EOS, detected in token space on the
sampled ids (known tokenizations of the tags stop the decode in-jit; a host check on the
turn's ids catches any other tokenization and rolls the cache back to the tag's last token).
Sampled ids are kept as they are; nothing the model produced is re-tokenized. Rows that
searched get their query retrieved (batched across rows) and the observation appended to
their cache; rows that answered stop; invalid turns (an EOS without an action included, its
EOS dropped) get the reference's fixed message. After `max_turns` turns the remaining rows
get one final turn without search: it still stops at `</search>`, and a search there ends the
row unanswered, as in the reference. Finished rows are compacted out of the batch, so they
cost no compute.
"""

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from dgpo_jax.models.sampler import Sampler, SamplingParams, bucket
from dgpo_jax.models.tokenizer import Tokenizer
from dgpo_jax.parallel import distributed, sharding
from dgpo_jax.retrieval.retriever import RetrieverError, format_information
from dgpo_jax.rollout import text as T
from dgpo_jax.utils.errors import DgpoError


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  max_turns: int = 4
  max_turn_tokens: int = 500  # per generation segment (reference: max response per turn)
  max_obs_tokens: int = 500
  topk: int = 3
  max_doc_chars: int = 4000  # retrieved text is untrusted: bounded before tokenization
  max_query_chars: int = 1024
  # Tokens a row's context (prompt, turns, observations) may hold; 0 = as many as every turn
  # and observation need. A row whose next observation and turn would not fit ends, flagged
  # `context_full` (the reference caps its rolling context at 4,096 tokens).
  max_context: int = 0

  @classmethod
  def from_config(cls, config) -> "RolloutConfig":
    """From a run config's `rollout` section (and `retrieval.topk`)."""
    r = config.rollout
    return cls(max_turns=r.max_turns, max_turn_tokens=r.max_turn_tokens,
               max_obs_tokens=r.max_obs_tokens, topk=config.retrieval.topk,
               max_context=r.get("max_context", 0))

  def cache_needed(self, longest_prompt: int) -> int:
    """KV-cache slots a rollout needs for a prompt of `longest_prompt` tokens: every turn at
    its token budget plus every observation (at least 128 slots each), at most
    `max_context`."""
    need = longest_prompt + (self.max_turns + 1) * self.max_turn_tokens + self.max_turns * max(
        self.max_obs_tokens, 128)
    if self.max_context > 0:
      if longest_prompt + self.max_turn_tokens > self.max_context:
        raise DgpoError(f"rollout.max_context={self.max_context} leaves no room for a turn of "
                        f"{self.max_turn_tokens} tokens after a prompt of {longest_prompt}")
      need = min(need, self.max_context)
    return need


@dataclasses.dataclass
class Trajectory:
  """One row of a rollout. `response_*` arrays cover everything after the prompt."""
  question: str
  prompt_ids: list
  response_ids: list = dataclasses.field(default_factory=list)
  loss_mask: list = dataclasses.field(default_factory=list)  # 1 = model-generated
  logprobs: list = dataclasses.field(default_factory=list)  # sampler's, 0 where mask is 0
  turns: list = dataclasses.field(default_factory=list)  # [{kind, start, end, action}]
  queries: list = dataclasses.field(default_factory=list)
  doc_ids: list = dataclasses.field(default_factory=list)  # per query
  doc_titles: list = dataclasses.field(default_factory=list)
  answer: Optional[str] = None
  num_searches: int = 0
  flags: dict = dataclasses.field(default_factory=dict)
  done: bool = False

  def flag(self, name):
    self.flags[name] = self.flags.get(name, 0) + 1


def tag_token_seqs(tok: Tokenizer, tag: str) -> list:
  """Token sequences by which a tag can appear after common left contexts."""
  seqs = set()
  for ctx in ("", " ", "\n", "x", ".", "\n\n", " x"):
    base, full = tok.encode(ctx), tok.encode(ctx + tag)
    if full[:len(base)] == base and len(full) > len(base):
      seqs.add(tuple(full[len(base):]))
  return [list(s) for s in seqs]


class RolloutEngine:
  """Runs questions through policy + retriever.

  Args:
    sampler: a Sampler whose cache fits prompt + every turn and observation.
    tokenizer: the policy's tokenizer (its chat format wraps the prompt).
    retriever: anything with `retrieve(queries, topk) -> [[Doc]]`.
  """

  def __init__(self, sampler: Sampler, tokenizer: Tokenizer, retriever,
               cfg: RolloutConfig = RolloutConfig()):
    self.sampler, self.tok, self.retriever, self.cfg = sampler, tokenizer, retriever, cfg
    eos = [[e] for e in tokenizer.eos_ids]
    self.answer_stops = tag_token_seqs(tokenizer, "</answer>")
    self.search_stops = tag_token_seqs(tokenizer, "</search>")
    self.stops_with_search = self.answer_stops + self.search_stops + eos
    self.eos = set(tokenizer.eos_ids)

  def cache_needed(self, longest_prompt: int) -> int:
    return self.cfg.cache_needed(longest_prompt)

  def sampler_for(self, graphdef, params, questions: Sequence[str], margin: int = 0) -> Sampler:
    """A Sampler whose (bucketed) cache fits rollouts of `questions` (+ `margin` prompt
    tokens, for questions not among those measured). Rows are split over the data axes of
    the params' mesh; with several processes the sampler holds this host's own copy of the
    params (see `run_sharded`)."""
    longest = max(len(self.prompt_ids(q)) for q in questions)
    params = distributed.host_local(params)
    return Sampler(graphdef, params, bucket(self.cache_needed(longest + margin)),
                   self.tok.pad_id, row_sharding=sharding.row_sharder(params))

  def run_sharded(self, questions: Sequence[str], rng, sp: SamplingParams = SamplingParams(),
                  contexts: Optional[Sequence[Sequence]] = None) -> list[Trajectory]:
    """`run` over all processes: each rolls out its share of `questions` on its own devices
    (retrieving for its own rows) with its own sampling stream, and every process gets every
    trajectory back, in order. With one process this is `run`."""
    if jax.process_count() == 1:
      return self.run(questions, rng, sp, contexts)
    share = distributed.process_share(len(questions))
    mine = []
    if share.stop > share.start:
      mine = self.run(list(questions[share]), jax.random.fold_in(rng, jax.process_index()), sp,
                      None if contexts is None else list(contexts[share]))
    return distributed.allgather_objects(mine)

  def prompt_ids(self, question: str) -> list:
    return self.tok.encode(self.tok.apply_chat(T.user_message(question)))

  def observation_ids(self, docs) -> list:
    """`\\n\\n<information>…</information>\\n\\n` ≤ max_obs_tokens, the documents' text
    stripped as the reference strips it (no newline before the closing tag); the documents
    are cut, never the closing tag, so a long passage cannot leave the block open."""
    safe = [dataclasses.replace(d, title=T.neutralize(d.title, 300),
                                text=T.neutralize(d.text, self.cfg.max_doc_chars)) for d in docs]
    head, tail = self.tok.encode(T.INFO_OPEN), self.tok.encode(T.INFO_CLOSE)
    body = self.tok.encode(format_information(safe).strip())
    room = max(0, self.cfg.max_obs_tokens - len(head) - len(tail))
    return head + body[:room] + tail

  def run(self, questions: Sequence[str], rng, sp: SamplingParams = SamplingParams(),
          contexts: Optional[Sequence[Sequence]] = None) -> list[Trajectory]:
    """Rolls out `questions`; returns one Trajectory per question.

    Args:
      contexts: optional documents per question, shown as an information block right after
        the prompt (before the model's first turn), e.g. gold passages for ARCap's Thinking
        (run it with max_turns=0 so the model answers without searching).
    """
    cfg, s = self.cfg, self.sampler
    trajs = [Trajectory(q, self.prompt_ids(q)) for q in questions]
    longest = max(len(t.prompt_ids) for t in trajs)
    need = self.cache_needed(longest + (cfg.max_obs_tokens if contexts is not None else 0))
    if need > s.cache_size:
      raise DgpoError(f"rollout needs a cache of {need} tokens (prompt {longest} + turns), the "
                      f"sampler has {s.cache_size}; raise it or lower max_turns/max_turn_tokens")
    st = s.prefill([t.prompt_ids for t in trajs])
    if contexts is not None:
      chunks = [self.observation_ids(docs) for docs in contexts]
      for t, ch in zip(trajs, chunks):
        t.response_ids += ch
        t.loss_mask += [0] * len(ch)
        t.logprobs += [0.0] * len(ch)
        t.turns.append({"kind": "observation", "start": 0, "end": len(ch)})
      st = s.append(st, chunks)
    for turn in range(cfg.max_turns + 1):
      final = turn == cfg.max_turns
      live = [i for i, t in enumerate(trajs) if not t.done]
      if not live:
        break
      sub, idx = s.take_rows(st, live)
      # The last turn stops at </search> too (a search there ends the row unanswered, as
      # the reference cuts it), so text after the tag is never kept, scored or trained on.
      sub, res = s.decode(sub, cfg.max_turn_tokens, jax.random.fold_in(rng, turn), sp,
                          self.stops_with_search, active=np.arange(len(idx)) < len(live))
      lengths = np.asarray(sub.lengths).copy()
      obs_rows, queries = [], []
      for r, i in enumerate(live):
        t = trajs[i]
        ids = res.tokens[r, :res.num_tokens[r]].tolist()
        lps = res.logprobs[r, :res.num_tokens[r]].tolist()
        ids, lps, cut = self._cut_at_tag(ids, lps)
        if not final and ids and ids[-1] in self.eos and not self._has_action(ids):
          # EOS without an action before the last turn: the reference strips the EOS and
          # answers with the invalid-action message, so the row goes on (and the EOS is not
          # trained on).
          ids, lps, cut = ids[:-1], lps[:-1], cut + 1
          t.flag("eos_without_action")
        lengths[r] -= cut
        start = len(t.response_ids)
        t.response_ids += ids
        t.loss_mask += [1] * len(ids)
        t.logprobs += lps
        turn_text = self.tok.decode(ids)
        kind, payload = T.classify_turn(turn_text, search_allowed=not final)
        if kind == "invalid" and ids and ids[-1] in self.eos:
          kind = "eos"
        t.turns.append({"kind": "generate", "start": start, "end": len(t.response_ids),
                        "action": kind})
        if res.num_tokens[r] >= cfg.max_turn_tokens and kind == "invalid":
          t.flag("turn_truncated")
        if kind == "answer":
          t.answer, t.done = payload, True
        elif kind == "eos" or final:
          t.done = True
          t.flag("no_answer")
        elif kind == "search":
          q = payload
          if not q:
            t.flag("empty_query")
          elif len(q) > cfg.max_query_chars:
            t.flag("long_query")
            q = q[:cfg.max_query_chars]
          obs_rows.append(r)
          queries.append(q)
        else:
          t.flag("invalid_action")
          obs_rows.append(r)
          queries.append(None)
      sub = s.set_lengths(sub, lengths)
      if obs_rows:
        chunks = self._observations([trajs[live[r]] for r in obs_rows], queries)
        room = min(s.cache_size, cfg.max_context or s.cache_size) - lengths
        full = [[] for _ in range(len(idx))]
        for r, ch in zip(obs_rows, chunks):
          t = trajs[live[r]]
          if len(ch) + cfg.max_turn_tokens > room[r]:
            t.flag("context_full")
            t.done = True
            continue
          full[r] = ch
          start = len(t.response_ids)
          t.response_ids += ch
          t.loss_mask += [0] * len(ch)
          t.logprobs += [0.0] * len(ch)
          t.turns.append({"kind": "observation", "start": start, "end": len(t.response_ids)})
        sub = s.append(sub, full)
      st = s.put_rows(st, idx, len(live), sub)
    for t in trajs:
      t.done = True
    return trajs

  def _has_action(self, ids) -> bool:
    return T.classify_turn(self.tok.decode(ids), search_allowed=True)[0] != "invalid"

  def _cut_at_tag(self, ids, lps):
    """Cuts a turn after the first closing tag found in its decoded text (the host-side
    check for tag tokenizations the in-jit stop list missed). Returns (ids, lps, n_cut)."""
    tags = ("</answer>", "</search>")
    text = self.tok.decode(ids)
    first = min((text.find(g) + len(g) for g in tags if g in text), default=-1)
    if first < 0 or first == len(text):
      return ids, lps, 0
    for n in range(1, len(ids) + 1):  # smallest prefix whose text contains the tag
      if len(self.tok.decode(ids[:n])) >= first:
        return ids[:n], lps[:n], len(ids) - n
    return ids, lps, 0

  def _observations(self, trajs, queries):
    """Observation token chunks for queries (None = invalid action, "" = empty query);
    retrieval is batched over rows and a failing batch only empties its blocks (flagged)."""
    chunks = [None] * len(queries)
    todo = [k for k, q in enumerate(queries) if q]
    results = {}
    if todo:
      try:
        docs = self.retriever.retrieve([queries[k] for k in todo], self.cfg.topk)
        results = dict(zip(todo, docs))
      except (RetrieverError, DgpoError, OSError) as e:
        for k in todo:
          trajs[k].flag("retrieval_error")
          trajs[k].flags["retrieval_error_msg"] = str(e)[:200]
    for k, q in enumerate(queries):
      t = trajs[k]
      if q is None:  # invalid action
        chunks[k] = self.tok.encode(T.INVALID_ACTION)
        continue
      docs = results.get(k, [])  # empty query or failed retrieval: an empty block
      t.num_searches += 1
      t.queries.append(q or "")
      t.doc_ids.append([d.id for d in docs])
      t.doc_titles.append([d.title for d in docs])
      chunks[k] = self.observation_ids(docs)
    return chunks
