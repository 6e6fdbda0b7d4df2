"""`prepare`'s teacher demonstrations: the renamed copies (`prep.sft_renamed`)."""

import glob
import json
import shutil

import numpy as np
import pytest

from configs import synthetic
from dgpo_jax.models.tokenizer import SentencePieceTokenizer
from dgpo_jax.pipeline import prepare
from dgpo_jax.retrieval.retriever import IndexRetriever
from dgpo_jax.utils.errors import DgpoError


@pytest.mark.slow  # reads the shared smoke run, which takes minutes to build
def test_renamed_demonstrations_copy_fresh_names_into_queries(smoke_run, tmp_path):
  shutil.copytree(smoke_run / "world", tmp_path / "world",
                  ignore=shutil.ignore_patterns("sft_*.npz"))
  tok = SentencePieceTokenizer(glob.glob(str(smoke_run / "tokenizer" / "*.model"))[0],
                               chat_format="plain")
  retriever = IndexRetriever(str(tmp_path / "world" / "index_bm25"))
  qs = [json.loads(l) for l in open(tmp_path / "world" / "train.jsonl")][:12]
  c = synthetic.get_config("smoke")
  c.prep.sft_renamed = 0
  plain = prepare.demonstrations(c, str(tmp_path), tok, retriever, qs)
  c.prep.sft_renamed = 1
  both = prepare.demonstrations(c, str(tmp_path), tok, retriever, qs)
  assert len(glob.glob(str(tmp_path / "world" / "sft_*.npz"))) == 2  # cached apart
  n, T = plain[0].shape
  assert both[0].shape[0] == 2 * n
  for a, b in zip(plain, both):  # the originals first, unchanged
    np.testing.assert_array_equal(b[:n, :T], a)
  for i, q in enumerate(qs):
    row = both[0][n + i][both[1][n + i] == 1]
    text = tok.decode(row.tolist())
    learned = tok.decode(row[both[2][n + i][both[1][n + i] == 1] == 1].tolist())
    named = [h for h, _ in q["hops"] if h in q["question"]]
    assert named and not any(name in text for name in named), text
    query = learned.split("<search>")[1].split("</search>")[0].strip()
    question = text.split("Question:")[1].split("<think>")[0]
    assert query not in named and query in question  # copied from the renamed question


def test_a_bad_number_of_renamed_copies_is_named():
  c = synthetic.get_config("smoke")
  c.prep.sft_renamed = -1
  with pytest.raises(DgpoError, match="config.prep.sft_renamed: -1"):
    prepare.demonstrations(c, "/nonexistent", None, None, [])
