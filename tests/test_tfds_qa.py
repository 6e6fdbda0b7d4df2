"""The optional tensorflow-datasets QA builder (skipped when tensorflow_datasets is absent)."""

import json

import pytest

from dgpo_jax.data import qa
from dgpo_jax.utils.errors import DgpoError


def test_prepare_and_read_back(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  from dgpo_jax.data import tfds_qa
  a = tmp_path / "a.jsonl"
  a.write_text("".join(json.dumps(r) + "\n" for r in [
      {"id": "x1", "question": "Who?", "golden_answers": ["Ann", "Anne"], "family": "bridge"},
      {"question": "Where", "answer": "Oslo"}, {"question": "None?", "golden_answers": []}]))
  counts = tfds_qa.prepare({"train": [f"nq={a}"], "test": [str(a)]}, str(tmp_path / "d"))
  assert counts == {"train": 2, "test": 2}  # the row without an answer is skipped
  rows = {r["question"]: r for r in tfds_qa.read_rows(str(tmp_path / "d"), "train")}
  assert rows["Who?"] == {"id": "x1", "question": "Who?", "golden_answers": ["Ann", "Anne"],
                     "data_source": "nq", "family": "bridge"}
  assert rows["Where"]["golden_answers"] == ["Oslo"] and "family" not in rows["Where"]
  f = qa.read_qa(f"mine=tfds:{tmp_path / 'd'}:test")  # what a config's data.train may name
  assert f.name == "mine" and len(f.rows) == 2
  assert len(tfds_qa.read_rows(str(tmp_path / "d"), "train", indices=[1])) == 1
  with pytest.raises(DgpoError, match="cannot read"):
    tfds_qa.read_rows(str(tmp_path / "nothing"), "train")
