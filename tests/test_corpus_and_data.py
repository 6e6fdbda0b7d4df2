import numpy as np
import pytest

from dgpo_jax.data import corpus, lm_data
from dgpo_jax.models.tokenizer import SentencePieceTokenizer
from dgpo_jax.utils.errors import DgpoError
from conftest import WIKI, needs_shared


@needs_shared
def test_reads_the_real_wikipedia_sample():
  stats = {}
  ps = list(corpus.iter_corpus(WIKI, stats=stats))
  assert len(ps) == 1000 and stats == {"read": 1000, "skipped": 0}
  assert any(p.title == '"Evan Morris"' for p in ps)  # title keeps its quotes


def test_malformed_lines_name_file_and_line(tmp_path):
  f = tmp_path / "c.jsonl"
  f.write_bytes(b'{"id": "1", "contents": "\\"A\\"\\ntext"}\n{"id": 2}\n\xff\xfe\n')
  with pytest.raises(DgpoError, match=r"c.jsonl:2: malformed corpus record"):
    list(corpus.iter_corpus(str(f)))
  stats = {}
  assert [p.id for p in corpus.iter_corpus(str(f), skip_bad=True, stats=stats)] == ["1"]
  assert stats["skipped"] == 2


def test_sentencepiece_keeps_action_tags_whole(tmp_path):
  texts = [f"<think> step {i} </think><search> query {i} </search><answer> x{i} </answer> "
           "some ordinary words here" for i in range(200)]
  path = lm_data.train_sentencepiece(texts, str(tmp_path / "spm"), 300)
  tok = SentencePieceTokenizer(path)
  for tag in lm_data.ACTION_TAGS:
    tid = tok.token_to_id(tag)
    assert tid is not None and tid in tok.encode(tag)  # one piece (after an optional "▁")
  ids = tok.encode("<search> foo </search>")
  assert tok.token_to_id("<search>") in ids and tok.token_to_id("</search>") in ids
  assert tok.decode(ids) == "<search> foo </search>"


def test_pack_and_resumable_batch_order():
  rows = lm_data.pack([[5, 6, 7], [8, 9]], seq_len=3, eos_id=1)
  assert rows.tolist() == [[5, 6, 7, 1], [1, 8, 9, 1]]
  a = [lm_data.batch_indices(10, 3, s, seed=4).tolist() for s in range(6)]
  b = [lm_data.batch_indices(10, 3, s, seed=4).tolist() for s in range(6)]
  assert a == b
  assert len(set(sum(a[:3], []))) == 9  # no repeats within an epoch
  with pytest.raises(DgpoError, match="exceeds"):
    lm_data.batch_indices(2, 3, 0, 0)


def test_loss_positions_list_the_counted_targets_one_shape_per_width():
  loss = np.zeros((3, 9), np.int32)
  loss[0, 3:6] = 1  # targets 3..5 → input positions 2..4
  loss[1, 1] = loss[1, 8] = 1
  lengths = np.array([7, 9, 150])
  loss[2, 1:] = 1
  caps = lm_data.loss_caps(lengths, loss, multiple=64, k_multiple=4)
  assert caps == {64: 4, 192: 8}  # a width's cap covers every row short enough to be in it
  idx = lm_data.loss_positions(loss[:2], caps[64])
  assert idx.tolist() == [[2, 3, 4, -1], [0, 7, -1, -1]]
  with pytest.raises(DgpoError, match="row 0 has 3 loss positions, more than K=2"):
    lm_data.loss_positions(loss[:1], 2)


def test_masked_batches_width_multiple_trades_widths_for_padding_and_keeps_every_target():
  """`data.width_multiple`: a coarser multiple cuts batches to fewer widths (fewer compiled
  steps) and loses no loss position: each row's targets are the same at any multiple."""
  rng = np.random.default_rng(0)
  n, t = 64, 400
  tokens = rng.integers(3, 100, (n, t)).astype(np.int32)
  lengths = rng.integers(30, t, n)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  gen = (rng.random(tokens.shape) < 0.3).astype(np.int32) * mask
  gen[:, 0] = 0
  widths, targets = {}, {}
  for m in (64, 256):
    b = lm_data.masked_batches(tokens, mask, gen, 8, 5, multiple=m)
    widths[m] = {b(s)["tokens"].shape[1] for s in range(24)}
    targets[m] = {}
    for s in range(8):  # one epoch: every row once
      x = b(s)
      for r in range(x["tokens"].shape[0]):  # a row is known by its first tokens
        key = x["tokens"][r, :lengths.min()].tobytes()
        pos = x["loss_idx"][r]
        targets[m][key] = tuple(x["tokens"][r, 1:][pos[pos >= 0]])
  assert all(w % 256 == 0 or w == t for w in widths[256])
  assert len(widths[256]) < len(widths[64])
  assert targets[256] == targets[64] and len(targets[64]) == n
