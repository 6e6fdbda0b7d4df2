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

from dgpo_jax.models.sampler import Sampler, SamplingParams
from dgpo_jax.utils import shapes
from dgpo_jax.models.tokenizer import Tokenizer
from dgpo_jax.parallel import distributed, sharding
from dgpo_jax.retrieval.retriever import RetrieverError, format_information
from dgpo_jax.rollout import text as rollout_text
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


_NO_OBSERVATION = object()  # a turn that answered or ended its row: nothing to retrieve


def _append_observation(t: Trajectory, ids):
  """An observation block (not trained on) at the end of `t`'s response."""
  start = len(t.response_ids)
  t.response_ids += ids
  t.loss_mask += [0] * len(ids)
  t.logprobs += [0.0] * len(ids)
  t.turns.append({"kind": "observation", "start": start, "end": len(t.response_ids)})


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

  @classmethod
  def for_model(cls, graphdef, params, tokenizer: Tokenizer, retriever, cfg: RolloutConfig,
                questions: Sequence[str], margin: int = 0) -> "RolloutEngine":
    """An engine over a sampler of the model whose cache fits rollouts of `questions`
    (`sampler_for`)."""
    engine = cls(None, tokenizer, retriever, cfg)
    engine.sampler = engine.sampler_for(graphdef, params, questions, margin)
    return engine

  def cache_needed(self, longest_prompt: int) -> int:
    return self.cfg.cache_needed(longest_prompt)

  def sampler_for(self, graphdef, params, questions: Sequence[str], margin: int = 0) -> Sampler:
    """A Sampler whose (bucketed) cache fits rollouts of `questions` (+ `margin` prompt
    tokens, for questions not among those measured). Rows are split over the data axes of
    the params' mesh; with several processes the sampler holds this host's own copy of the
    params (see `run_sharded`)."""
    longest = max(len(self.prompt_ids(q)) for q in questions)
    params = distributed.host_local(params)
    return Sampler(graphdef, params, shapes.pow2(self.cache_needed(longest + margin)),
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
    return self.tok.encode(self.tok.apply_chat(rollout_text.user_message(question)))

  def observation_ids(self, docs) -> list:
    """`\\n\\n<information>…</information>\\n\\n` ≤ max_obs_tokens, the documents' text
    stripped as the reference strips it (no newline before the closing tag); the documents
    are cut, never the closing tag, so a long passage cannot leave the block open."""
    safe = [dataclasses.replace(d, title=rollout_text.neutralize(d.title, 300),
                                text=rollout_text.neutralize(d.text, self.cfg.max_doc_chars))
            for d in docs]
    head = self.tok.encode(rollout_text.INFO_OPEN)
    tail = self.tok.encode(rollout_text.INFO_CLOSE)
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
    trajs, st = self._start(questions, contexts)
    for turn in range(cfg.max_turns + 1):
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
        n = int(res.num_tokens[r])
        cut, query = self._record_turn(trajs[i], res.tokens[r, :n].tolist(),
                                       res.logprobs[r, :n].tolist(), n,
                                       final=turn == cfg.max_turns)
        lengths[r] -= cut
        if query is not _NO_OBSERVATION:
          obs_rows.append(r)
          queries.append(query)
      sub = s.set_lengths(sub, lengths)
      if obs_rows:
        sub = self._observe(sub, [trajs[live[r]] for r in obs_rows], obs_rows, queries,
                            lengths)
      st = s.put_rows(st, idx, len(live), sub)
    for t in trajs:
      t.done = True
    return trajs

  def _start(self, questions, contexts):
    """The trajectories and the sampler state after their prompts (and contexts)."""
    s = self.sampler
    trajs = [Trajectory(q, self.prompt_ids(q)) for q in questions]
    longest = max(len(t.prompt_ids) for t in trajs)
    need = self.cache_needed(longest + (self.cfg.max_obs_tokens if contexts is not None else 0))
    if need > s.cache_size:
      raise DgpoError(f"rollout needs a cache of {need} tokens (prompt {longest} + turns), the "
                      f"sampler has {s.cache_size}; raise it or lower max_turns/max_turn_tokens")
    st = s.prefill([t.prompt_ids for t in trajs])
    if contexts is not None:
      chunks = [self.observation_ids(docs) for docs in contexts]
      for t, ch in zip(trajs, chunks):
        _append_observation(t, ch)
      st = s.append(st, chunks)
    return trajs, st

  def _record_turn(self, t: Trajectory, ids, lps, generated: int, final: bool):
    """Appends one generated turn to `t` and classifies it. Returns (tokens cut off the
    sampler's row, the query to search: a string, None for the invalid-action message, or
    `_NO_OBSERVATION` when the row answered or ended)."""
    cfg = self.cfg
    ids, lps, cut = self._cut_at_tag(ids, lps)
    if not final and ids and ids[-1] in self.eos and not self._has_action(ids):
      # EOS without an action before the last turn: the reference strips the EOS and
      # answers with the invalid-action message, so the row goes on (and the EOS is not
      # trained on).
      ids, lps, cut = ids[:-1], lps[:-1], cut + 1
      t.flag("eos_without_action")
    start = len(t.response_ids)
    t.response_ids += ids
    t.loss_mask += [1] * len(ids)
    t.logprobs += lps
    kind, payload = rollout_text.classify_turn(self.tok.decode(ids), search_allowed=not final)
    if kind == "invalid" and ids and ids[-1] in self.eos:
      kind = "eos"
    t.turns.append({"kind": "generate", "start": start, "end": len(t.response_ids),
                    "action": kind})
    if generated >= cfg.max_turn_tokens and kind == "invalid":
      t.flag("turn_truncated")
    if kind == "answer":
      t.answer, t.done = payload, True
      return cut, _NO_OBSERVATION
    if kind == "eos" or final:
      t.done = True
      t.flag("no_answer")
      return cut, _NO_OBSERVATION
    if kind != "search":
      t.flag("invalid_action")
      return cut, None
    if not payload:
      t.flag("empty_query")
    elif len(payload) > cfg.max_query_chars:
      t.flag("long_query")
      payload = payload[:cfg.max_query_chars]
    return cut, payload

  def _observe(self, sub, trajs, rows, queries, lengths):
    """Retrieves for `trajs` (rows `rows` of the sampler state `sub`) and appends each
    observation that leaves room for another turn; a row without that room ends."""
    s, cfg = self.sampler, self.cfg
    chunks = self._observations(trajs, queries)
    room = min(s.cache_size, cfg.max_context or s.cache_size) - lengths
    full = [[] for _ in range(len(lengths))]
    for t, r, ch in zip(trajs, rows, chunks):
      if len(ch) + cfg.max_turn_tokens > room[r]:
        t.flag("context_full")
        t.done = True
        continue
      full[r] = ch
      _append_observation(t, ch)
    return s.append(sub, full)

  def _has_action(self, ids) -> bool:
    return rollout_text.classify_turn(self.tok.decode(ids), search_allowed=True)[0] != "invalid"

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
        chunks[k] = self.tok.encode(rollout_text.INVALID_ACTION)
        continue
      docs = results.get(k, [])  # empty query or failed retrieval: an empty block
      t.num_searches += 1
      t.queries.append(q or "")
      t.doc_ids.append([d.id for d in docs])
      t.doc_titles.append([d.title for d in docs])
      chunks[k] = self.observation_ids(docs)
    return chunks
