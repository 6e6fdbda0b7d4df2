"""Batched KV-cache sampling with fixed shapes: prefill, append to a live cache, decode.

The state of a batch between calls is a `SamplerState`: the KV cache, each row's number of
cached tokens, and each row's next-token logits. Rows are right-padded and carry their own
positions, so rows of different lengths share one batch without left padding, and new
tokens (a tool observation) can be appended to some rows and decoding resumed without
recomputing any prefix.

Shapes are bucketed (powers of two) so a long rollout compiles a handful of programs, and
every Sampler of one model shares them (`_programs`).
Decoding runs entirely inside one `lax.while_loop`; a row stops at its first stop sequence
(matched in token space on the ids it sampled) or at the token budget, and the whole loop
ends when every row has stopped.
"""

import dataclasses
import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgpo_jax.models.config import ModelConfig
from dgpo_jax.models import cpu_decode
from dgpo_jax.models.decoder import init_cache
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils import shapes


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """greedy=True takes the argmax; otherwise sample at `temperature` with nucleus `top_p`."""
  greedy: bool = False
  temperature: float = 1.0
  top_p: float = 1.0


class SamplerState(NamedTuple):
  cache: dict  # {"k","v"}: [L, B, KV, S, hd]
  lengths: jax.Array  # int32 [B]: cached tokens per row
  last_logits: jax.Array  # float32 [B, V]: logits for each row's next token


class DecodeResult(NamedTuple):
  tokens: np.ndarray  # int32 [B, N]: sampled ids (pad after a row stopped)
  logprobs: np.ndarray  # float32 [B, N]: log-prob of each sampled id (0 after stop)
  num_tokens: np.ndarray  # int32 [B]: tokens generated per row (stop sequence included)
  stop_index: np.ndarray  # int32 [B]: which stop sequence ended the row, -1 if none


def _pad_rows(rows: Sequence[Sequence[int]], width: int, pad: int) -> np.ndarray:
  out = np.full((len(rows), width), pad, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def stop_table(stop_seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Right-aligned stop sequences [n, K] (padded with -1) and their lengths [n]."""
  seqs = [list(s) for s in stop_seqs if len(s)]
  if not seqs:
    return np.full((1, 1), -2, np.int32), np.ones((1,), np.int32)  # matches nothing
  K = max(len(s) for s in seqs)
  table = np.full((len(seqs), K), -1, np.int32)
  for i, s in enumerate(seqs):
    table[i, K - len(s):] = s
  return table, np.array([len(s) for s in seqs], np.int32)


def sample_logits(logits_bv, rng, sp: SamplingParams):
  """Sampled ids [B] and their log-probs under the temperature-scaled distribution."""
  if sp.greedy:
    tok = jnp.argmax(logits_bv, axis=-1)
    logp = jax.nn.log_softmax(logits_bv, axis=-1)
  else:
    scaled = logits_bv / jnp.float32(sp.temperature)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    masked = scaled
    if sp.top_p < 1.0:
      sorted_logp = jnp.sort(logp, axis=-1)[:, ::-1]
      cum = jnp.cumsum(jnp.exp(sorted_logp), axis=-1)
      # Keep tokens whose preceding mass is < top_p (always keeps the top token).
      keep_sorted = (cum - jnp.exp(sorted_logp)) < sp.top_p
      cutoff = jnp.min(jnp.where(keep_sorted, sorted_logp, jnp.inf), axis=-1, keepdims=True)
      masked = jnp.where(logp >= cutoff, scaled, -jnp.inf)
    tok = jax.random.categorical(rng, masked, axis=-1)
  tok = tok.astype(jnp.int32)
  return tok, jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]


def _chunk_impl(graphdef, params, st: SamplerState, tokens_bt, n_b, *, window: int):
  """Feeds each row its `n_b` new tokens and keeps the logits after the last (`append`)."""
  model = nnx.merge(graphdef, params)
  T = tokens_bt.shape[1]
  positions = st.lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
  h, cache = model.hidden(tokens_bt, positions, cache=st.cache, cache_window=window)
  last = jnp.take_along_axis(h, jnp.maximum(n_b - 1, 0)[:, None, None], axis=1)
  logits = model.logits(last)[:, 0]
  has_new = n_b > 0
  return SamplerState(cache, st.lengths + n_b,
                      jnp.where(has_new[:, None], logits, st.last_logits))


def _decode_impl(graphdef, cache_size, pad_id, params, packed, st: SamplerState, rng, active_b,
                 max_new, stops_nk, stop_len_n, *, sp: SamplingParams, width: int,
                 attn_window: int):
  """Decodes up to `max_new` tokens per active row in one while loop (`Sampler.decode`)."""
  model = nnx.merge(graphdef, params)
  B = active_b.shape[0]
  K = stops_nk.shape[1]
  S = cache_size

  def cond(c):
    i, st, active, *_ = c
    return (i < max_new) & jnp.any(active)

  def body(c):
    i, st, active, window, toks, logps, n, stop_idx = c
    tok, logp = sample_logits(st.last_logits, jax.random.fold_in(rng, i), sp)
    tok = jnp.where(active, tok, pad_id)
    toks = toks.at[:, i].set(tok)
    logps = logps.at[:, i].set(jnp.where(active, logp, 0.0))
    window = jnp.concatenate([window[:, 1:], tok[:, None]], axis=1)
    hit = jnp.all((window[:, None, :] == stops_nk[None]) | (stops_nk[None] == -1), axis=-1)
    hit = hit & active[:, None]  # [B, n]
    first = jnp.argmax(hit, axis=-1).astype(jnp.int32)
    stop_idx = jnp.where(jnp.any(hit, -1) & (stop_idx < 0), first, stop_idx)
    # Every sampled token is fed back, the stop tokens too: a later append continues
    # right after them.
    pos = st.lengths[:, None]  # a full row (length S) writes nowhere: scatter drops it
    h, cache = model.hidden(tok[:, None], pos, cache=st.cache, cache_window=attn_window,
                            packed=packed)
    logits = model.logits(h, packed)[:, 0]
    st = SamplerState(cache, st.lengths + active.astype(jnp.int32),
                      jnp.where(active[:, None], logits, st.last_logits))
    n = n + active.astype(jnp.int32)
    active = active & ~jnp.any(hit, -1) & (st.lengths < S)
    return i + 1, st, active, window, toks, logps, n, stop_idx

  init = (jnp.int32(0), st, active_b, jnp.full((B, K), -1, jnp.int32),
          jnp.full((B, width), pad_id, jnp.int32), jnp.zeros((B, width), jnp.float32),
          jnp.zeros((B,), jnp.int32), jnp.full((B,), -1, jnp.int32))
  _, st, _, _, toks, logps, n, stop_idx = jax.lax.while_loop(cond, body, init)
  return st, toks, logps, n, stop_idx


class _Programs(NamedTuple):
  pack: object
  chunk: object
  decode: object


@functools.lru_cache(maxsize=32)
def _programs(graphdef, cache_size: int, pad_id: int) -> _Programs:
  """The jitted programs of every Sampler of one model (graphdef, cache size, pad id).

  Shared, not made per Sampler: each evaluation, validation and RL step makes a new Sampler,
  and programs made per instance were traced, lowered and fetched from the compilation
  cache again for each one."""
  return _Programs(
      pack=jax.jit(lambda p: nnx.merge(graphdef, p).packed_weights()),
      chunk=jax.jit(functools.partial(_chunk_impl, graphdef), static_argnames=("window",),
                    donate_argnums=(1,)),
      decode=jax.jit(functools.partial(_decode_impl, graphdef, cache_size, pad_id),
                     static_argnames=("sp", "width", "attn_window"), donate_argnums=(2,)))


class Sampler:
  """Generation over a fixed-size cache for one model.

  Args:
    graphdef, params: the model (`nnx.split` of a Decoder; params a pure dict or State),
      possibly sharded. `params` may be reassigned between calls (a policy being trained).
    cache_size: slots per row; prompt + everything appended/generated must fit.
    pad_id: id used for padding (never attended).
    row_sharding: optional `f(rows, ndim, axis) -> Sharding` placing the rows of a batch's
      state (e.g. `parallel.sharding.row_sharder`), so each device decodes its own rows;
      by default the state follows wherever the computation puts it.
    cpu_kernels: decode steps on the C++ kernels of `cpu_decode` (packed weights, in-place
      cache reads). None (default) uses them where they apply: CPU backend, float32 model,
      params on one device, no row sharding, and the kernels built. False keeps XLA's dots.
  """

  def __init__(self, graphdef, params, cache_size: int, pad_id: int = 0, row_sharding=None,
               cpu_kernels: Optional[bool] = None):
    self.graphdef = graphdef
    self.row_sharding = row_sharding
    self._new_state = {}  # batch → jitted constructor of an empty state, born row-split
    self.cfg: ModelConfig = nnx.merge(graphdef, params).cfg
    self.params = params
    self.cache_size = cache_size
    self.pad_id = pad_id
    self.cpu_kernels = (self._kernels_apply(params) if cpu_kernels is None
                        else bool(cpu_kernels) and cpu_decode.available())
    self._programs = _programs(graphdef, cache_size, pad_id)

  @property
  def params(self):
    return self._params

  @params.setter
  def params(self, params):  # a policy being trained: its packed copy is made again
    self._params, self._packed = params, None

  def _kernels_apply(self, params) -> bool:
    if jax.default_backend() != "cpu" or self.row_sharding is not None:
      return False
    if self.cfg.dtype != "float32" or self.cfg.param_dtype != "float32":
      return False
    devices = set()
    for leaf in jax.tree.leaves(params):
      if isinstance(leaf, jax.Array):
        devices |= set(leaf.sharding.device_set)
    return len(devices) <= 1 and cpu_decode.available()

  def packed(self) -> Optional[dict]:
    """The decode-only packed weights (`Decoder.packed_weights`), made once per params."""
    if not self.cpu_kernels:
      return None
    if self._packed is None:
      self._packed = self._programs.pack(self._params)
    return self._packed

  def _window(self, n: int) -> int:
    """Static attention window over the cache for a call whose rows hold ≤ n tokens: 0 for
    an empty cache, else a power-of-two bucket (few compiles, most of a big cache skipped)."""
    return 0 if n <= 0 else min(shapes.pow2(n), self.cache_size)

  # ---- row selection (compaction of finished rows) ----
  @staticmethod
  @jax.jit
  def _take(st: SamplerState, idx):
    return SamplerState({k: jnp.take(v, idx, axis=1) for k, v in st.cache.items()},
                        jnp.take(st.lengths, idx), jnp.take(st.last_logits, idx, axis=0))

  @staticmethod
  @functools.partial(jax.jit, donate_argnums=(0,))
  def _put(st: SamplerState, idx, sub: SamplerState):
    # An index past the batch (a padding row's) writes nowhere.
    return SamplerState(
        {k: v.at[:, idx].set(sub.cache[k], mode="drop") for k, v in st.cache.items()},
        st.lengths.at[idx].set(sub.lengths, mode="drop"),
        st.last_logits.at[idx].set(sub.last_logits, mode="drop"))

  def _place(self, st: SamplerState) -> SamplerState:
    if self.row_sharding is None:
      return st
    B, f = int(st.lengths.shape[0]), self.row_sharding
    return SamplerState({k: jax.device_put(v, f(B, v.ndim, 1)) for k, v in st.cache.items()},
                        jax.device_put(st.lengths, f(B, 1, 0)),
                        jax.device_put(st.last_logits, f(B, 2, 0)))

  def take_rows(self, st: SamplerState, rows: Sequence[int]) -> tuple[SamplerState, np.ndarray]:
    """A sub-batch of `rows`, padded (by repeating the first row) to a power-of-two size so
    few shapes compile. Returns (sub state, padded row ids)."""
    rows = list(rows)
    size = min(shapes.pow2(len(rows), minimum=1), int(st.lengths.shape[0]))
    idx = np.asarray(rows + [rows[0]] * (size - len(rows)), np.int32)
    return self._place(self._take(st, idx)), idx

  def put_rows(self, st: SamplerState, idx: np.ndarray, n_real: int,
               sub: SamplerState) -> SamplerState:
    """Writes the first `n_real` rows of a sub-batch back (padding rows are dropped). The
    whole padded sub-batch goes in, its padding rows aimed past the batch, so one program
    serves every `n_real` of a sub-batch size."""
    dest = np.where(np.arange(len(idx)) < n_real, idx, int(st.lengths.shape[0]))
    return self._put(st, dest.astype(np.int32), sub)

  @staticmethod
  def set_lengths(st: SamplerState, lengths) -> SamplerState:
    """Rolls rows back to `lengths` cached tokens (slots past it are ignored and overwritten)."""
    return st._replace(lengths=jnp.asarray(lengths, jnp.int32))

  # ---- host API ----
  def _empty(self, batch: int) -> SamplerState:
    return SamplerState(init_cache(self.cfg, batch, self.cache_size),
                        jnp.zeros((batch,), jnp.int32),
                        jnp.zeros((batch, self.cfg.vocab_size), jnp.float32))

  def new_state(self, batch: int) -> SamplerState:
    if self.row_sharding is None:
      return self._empty(batch)
    if batch not in self._new_state:  # born split: a rollout's cache never sits on one device
      f, make = self.row_sharding, functools.partial(self._empty, batch)
      shape = jax.eval_shape(make)
      out = SamplerState({k: f(batch, v.ndim, 1) for k, v in shape.cache.items()},
                         f(batch, 1, 0), f(batch, 2, 0))
      self._new_state[batch] = jax.jit(make, out_shardings=out)
    return self._new_state[batch]()

  def prefill(self, prompts: Sequence[Sequence[int]]) -> SamplerState:
    """Starts a batch from token-id prompts (each non-empty)."""
    if any(len(p) == 0 for p in prompts):
      fail("prefill: every prompt needs at least one token")
    return self.append(self.new_state(len(prompts)), prompts)

  def append(self, st: SamplerState, chunks: Sequence[Sequence[int]]) -> SamplerState:
    """Feeds new tokens to each row (an empty chunk leaves the row as it is).

    Raises:
      DgpoError: when a row would exceed the cache size.
    """
    lengths = np.asarray(st.lengths)
    n = np.array([len(c) for c in chunks], np.int32)
    if len(chunks) != lengths.shape[0]:
      fail(f"append: got {len(chunks)} chunks for a batch of {lengths.shape[0]}")
    over = np.nonzero(lengths + n > self.cache_size)[0]
    if over.size:
      r = int(over[0])
      fail(f"append: row {r} would hold {int(lengths[r] + n[r])} tokens, cache size is "
           f"{self.cache_size}")
    if n.max(initial=0) == 0:
      return st
    width = min(shapes.pow2_or_1p5(int(n.max())), self.cache_size)
    tokens = _pad_rows(chunks, width, self.pad_id)
    return self._programs.chunk(self.params, st, tokens, n,
                                window=self._window(int(lengths.max())))

  def decode(self, st: SamplerState, max_new_tokens: int, rng, sp: SamplingParams = SamplingParams(),
             stop_seqs: Sequence[Sequence[int]] = (), active: Optional[np.ndarray] = None):
    """Decodes up to `max_new_tokens` per active row.

    Returns:
      (state, DecodeResult) with arrays trimmed to `max_new_tokens` columns.
    """
    B = int(st.lengths.shape[0])
    active = np.ones((B,), bool) if active is None else np.asarray(active, bool)
    active = active & (np.asarray(st.lengths) < self.cache_size)
    table, lens = stop_table(stop_seqs)
    width = shapes.pow2(max_new_tokens)
    packed = self.packed()
    # The CPU kernels read each row's filled slots in place whatever the window, so one
    # program serves every cache fill; XLA's dots attend the whole window.
    window = (self.cache_size if packed is not None else
              self._window(int(np.asarray(st.lengths).max(initial=0)) + max_new_tokens))
    st, toks, logps, n, stop_idx = self._programs.decode(
        self.params, packed, st, rng, active, np.int32(max_new_tokens), table, lens, sp=sp,
        width=width, attn_window=window)
    res = DecodeResult(np.asarray(toks)[:, :max_new_tokens], np.asarray(logps)[:, :max_new_tokens],
                       np.asarray(n), np.asarray(stop_idx))
    return st, res

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, rng=None,
               sp: SamplingParams = SamplingParams(greedy=True),
               stop_seqs: Sequence[Sequence[int]] = ()) -> DecodeResult:
    """Prefill + decode in one call."""
    rng = jax.random.key(0) if rng is None else rng
    st = self.prefill(prompts)
    _, res = self.decode(st, max_new_tokens, rng, sp, stop_seqs)
    return res
