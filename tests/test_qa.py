"""QA file readers: accepted schemas, skipped rows without answers, clear errors."""

import json

import pytest

from conftest import needs_shared
from dgpo_jax.data import qa
from dgpo_jax.utils.errors import DgpoError


def _write(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def test_schemas_and_skipped_rows(tmp_path):
  f = _write(tmp_path / "mix.jsonl", [
      {"id": "a", "question": "Who?", "golden_answers": ["X", "Y"]},
      {"question": "Where", "answer": "Z"},
      {"question": "Nothing?", "golden_answers": []},
      {"prompt": [{"role": "user", "content": "When?"}],
       "reward_model": {"ground_truth": {"target": ["1900"]}}}])
  out = qa.read_qa(f"nq={f}")
  assert out.name == "nq" and out.skipped_no_answer == 1
  assert [r["golden_answers"] for r in out.rows] == [["X", "Y"], ["Z"], ["1900"]]
  assert out.rows[2]["question"] == "When?"
  assert qa.read_qa(f).name == "mix"


@pytest.mark.parametrize("row,match", [
    ({"q": "x", "golden_answers": ["a"]}, "no 'question'"),
    ({"question": "x", "label": "a"}, "no answer field"),
    ({"question": "x", "answer": 3}, "string or a list"),
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, match):
  f = _write(tmp_path / "bad.jsonl", [{"question": "ok?", "answer": "a"}, row])
  with pytest.raises(DgpoError, match=match) as e:
    qa.read_qa(f)
  assert "bad.jsonl:2" in str(e.value)


def test_empty_and_missing_files(tmp_path):
  with pytest.raises(DgpoError, match="no such file"):
    qa.read_qa(str(tmp_path / "nope.jsonl"))
  f = _write(tmp_path / "empty.jsonl", [{"question": "x", "golden_answers": []}])
  with pytest.raises(DgpoError, match="no usable questions"):
    qa.read_qa(f)


@needs_shared
def test_reads_the_real_nq_sample():
  from conftest import SHARED_DATA
  path = f"{SHARED_DATA}/flashrag-sample/nq_test.jsonl"
  out = qa.read_qa(path)
  lines = [l for l in open(path) if l.strip()]
  assert len(out.rows) == len(lines) and all(r["golden_answers"] for r in out.rows)
