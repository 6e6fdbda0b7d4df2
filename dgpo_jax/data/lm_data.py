"""Language-model data: a SentencePiece tokenizer trained on a corpus, packed sequences,
and a deterministic, resumable batch order.

The batch for step s is a pure function of (seed, s): resuming at step s needs no iterator
state, and every host can take its own rows of the same global batch.
"""

import functools
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from dgpo_jax.utils.errors import fail
from dgpo_jax.utils import shapes

ACTION_TAGS = ("<think>", "</think>", "<search>", "</search>", "<information>",
               "</information>", "<answer>", "</answer>")


def spm_prefix(directory: str, tokenizer_config) -> str:
  """Where a run keeps its trained SentencePiece model (`<prefix>.model`): named by the
  settings it was trained with, so a changed setting never reads a stale one."""
  cap = tokenizer_config.get("max_piece_length", 0)
  return os.path.join(directory, "tokenizer",
                      f"spm{tokenizer_config.vocab_size}" + (f"-p{cap}" if cap else ""))


# The special pieces' ids of every tokenizer `train_sentencepiece` makes.
SPECIAL_IDS = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3)


def train_sentencepiece(texts: Iterable[str], out_prefix: str, vocab_size: int,
                        user_symbols: Sequence[str] = ACTION_TAGS,
                        max_piece_length: int = 0) -> str:
  """Trains a BPE SentencePiece model (ids: pad 0, eos 1, bos 2, unk 3), deterministically.

  The action tags are user-defined symbols, so each is always one token. Written atomically
  (`<prefix>.model`); returns its path. `max_piece_length` > 0 caps a piece's characters
  (SentencePiece's default is 16); the vocabulary may then come out smaller than asked.
  """
  import sentencepiece as spm
  model = out_prefix + ".model"
  if os.path.isfile(model):
    return model
  os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
  tmp = out_prefix + ".tmp"
  texts = [t for t in texts if t.strip()]
  if not texts:
    fail("train_sentencepiece: no text to train on")
  spm.SentencePieceTrainer.Train(
      sentence_iterator=iter(texts), model_prefix=tmp, vocab_size=vocab_size, model_type="bpe",
      character_coverage=1.0, byte_fallback=True, **SPECIAL_IDS,
      user_defined_symbols=list(user_symbols), split_digits=True,
      input_sentence_size=200000, shuffle_input_sentence=False, num_threads=1,
      max_sentence_length=1 << 14, minloglevel=2, hard_vocab_limit=False,
      max_sentencepiece_length=max_piece_length or 16)
  os.replace(tmp + ".model", model)
  os.replace(tmp + ".vocab", out_prefix + ".vocab")
  return model


def pack(token_docs: Iterable[Sequence[int]], seq_len: int, eos_id: int) -> np.ndarray:
  """Concatenates documents (each followed by EOS) into rows of seq_len + 1 tokens.

  Rows overlap by one token so that inputs = row[:-1], targets = row[1:]. The last partial
  row is dropped.
  """
  stream: list[int] = []
  for doc in token_docs:
    stream.extend(doc)
    stream.append(eos_id)
  n = (len(stream) - 1) // seq_len
  if n == 0:
    fail(f"pack: {len(stream)} tokens are not enough for one sequence of {seq_len}")
  arr = np.asarray(stream[: n * seq_len + 1], np.int32)
  idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None]
  return arr[idx]


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Row ids of the global batch for `step`: epochs of seeded permutations, no replacement
  within an epoch. Depends only on its arguments (resumable)."""
  per_epoch = num_rows // batch_size
  if per_epoch == 0:
    fail(f"batch_size={batch_size} exceeds the {num_rows} packed sequences")
  epoch, k = divmod(step, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
  return perm[k * batch_size:(k + 1) * batch_size]


def length_grouped_batch(lengths: Sequence[int], batch_size: int, step: int, seed: int,
                         multiple: int = 64, group: int = 32) -> tuple[np.ndarray, int]:
  """(row ids, width) of the batch for `step`, with rows of similar length batched together.

  Each epoch is a seeded permutation cut into groups of `group` batches; each group is sorted
  by length and cut into batches, and the batch order is shuffled. The width is the longest
  row of the batch rounded up to `multiple` (few distinct shapes, little padding). Like
  `batch_indices`, a pure function of its arguments (resumable).
  """
  lengths = np.asarray(lengths, np.int64)
  n = len(lengths)
  per_epoch = n // batch_size
  if per_epoch == 0:
    fail(f"batch_size={batch_size} exceeds the {n} rows")
  epoch, k = divmod(step, per_epoch)
  order = _grouped_order(lengths.tobytes(), n, batch_size, epoch, seed, group)
  idx = order[k]
  width = int(shapes.round_up(lengths[idx].max(), multiple))
  return idx, width


@functools.lru_cache(maxsize=4)
def _grouped_order(lengths_bytes, n, batch_size, epoch, seed, group):
  lengths = np.frombuffer(lengths_bytes, dtype=np.int64)[:n]
  rng = np.random.default_rng([seed, epoch, 17])
  perm = rng.permutation(n)[: (n // batch_size) * batch_size]
  batches = []
  span = group * batch_size
  for s in range(0, len(perm), span):
    part = perm[s:s + span]
    part = part[np.argsort(lengths[part], kind="stable")]
    batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
  return [batches[i] for i in rng.permutation(len(batches))]


def masked_batches(tokens: np.ndarray, mask: np.ndarray, loss_mask: np.ndarray,
                   batch_size: int, seed: int, per_position: Optional[dict] = None,
                   multiple: int = 64):
  """`step -> batch` over a set of [N, T+1] rows trained on masked targets (SFT, KD): rows
  grouped by length and cut to their batch width (`length_grouped_batch`), the loss positions
  listed as `loss_idx` with one count per width (`loss_caps`, `loss_positions`).

  per_position: {field: [N, K, ...]} arrays whose [r, k] belongs to row r's k-th loss
  position (e.g. a frozen teacher's hidden states there, `pipeline.method.teacher_states`);
  each batch carries them cut to its `loss_idx` columns. K must cover `loss_caps`' largest.
  multiple: batch widths are the longest row rounded up to it (fewer widths, fewer compiled
  shapes, more padding).
  """
  lengths = np.asarray(mask).sum(1)
  caps = loss_caps(lengths, loss_mask, multiple)
  for name, a in (per_position or {}).items():
    if a.shape[0] != len(lengths) or a.shape[1] < max(caps.values()):
      fail(f"masked_batches: per-position field {name!r} has shape {a.shape}, expected "
           f"[{len(lengths)}, >= {max(caps.values())}, ...]")

  def batch(step):
    idx, w = length_grouped_batch(lengths, batch_size, step, seed, multiple)
    lm = loss_mask[idx, :w]
    out = {"tokens": tokens[idx, :w], "mask": mask[idx, :w], "loss_mask": lm,
           "loss_idx": loss_positions(lm, caps[w])}
    out.update({name: a[idx, :caps[w]] for name, a in (per_position or {}).items()})
    return out

  return batch


def loss_caps(lengths: Sequence[int], loss_mask: np.ndarray, multiple: int = 64,
              k_multiple: int = 32) -> dict:
  """{batch width: K}: the most loss positions any row fitting that width holds (rounded
  up to `k_multiple`). A batch of width w then gathers a fixed [B, K_w] set of positions:
  one compiled shape per width, as `length_grouped_batch` already has.

  `loss_mask` [N, T+1] marks targets that count (its column 0 never does: targets start at
  column 1).
  """
  lengths = np.asarray(lengths)
  counts = np.asarray(loss_mask)[:, 1:].astype(bool).sum(1)
  widths = shapes.round_up(lengths, multiple)  # the widths length_grouped_batch gives
  caps = {}
  for w in np.unique(widths):
    k = int(counts[widths <= w].max(initial=1))
    caps[int(w)] = min(int(w) - 1, max(k_multiple, -(-k // k_multiple) * k_multiple))
  return caps


def loss_positions(loss_mask_bt: np.ndarray, k: int) -> np.ndarray:
  """int32 [B, k]: per row, the input positions t whose target (column t+1) has loss mask 1,
  in order, padded with -1. The loss heads (LM head, fused KL) then run on these K positions
  instead of all T (in SFT and KD about one position in seven is model-generated).

  Raises:
    DgpoError: if a row has more than k loss positions (it would silently lose some).
  """
  m = np.asarray(loss_mask_bt)[:, 1:].astype(bool)
  out = np.full((m.shape[0], k), -1, np.int32)
  for r, row in enumerate(m):
    idx = np.flatnonzero(row)
    if len(idx) > k:
      fail(f"loss_positions: row {r} has {len(idx)} loss positions, more than K={k}")
    out[r, :len(idx)] = idx
  return out
