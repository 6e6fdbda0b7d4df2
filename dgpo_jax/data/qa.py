"""Question-answer files: FlashRAG jsonl, Search-R1 parquet, and plain {question, answer}.

Accepted schemas (one example per line for jsonl):
  flashrag   {"id", "question", "golden_answers": [str, ...]}  (extra fields kept)
  simple     {"question", "answer": str | [str, ...]}
  search-r1  parquet rows whose golden answers are in reward_model.ground_truth.target and
             whose question is in "question" (or the last user turn of "prompt")

Rows without any answer are counted and skipped (reported by the caller), never silently
dropped; anything else malformed is an error naming the file and line.
"""

import dataclasses
import json
import os

from dgpo_jax.utils.errors import fail

SCHEMAS = ("flashrag {id, question, golden_answers: [str]}", "simple {question, answer}",
           "search-r1 parquet {question|prompt, reward_model.ground_truth.target}")


@dataclasses.dataclass
class QAFile:
  name: str
  rows: list  # {"id", "question", "golden_answers", ...}
  skipped_no_answer: int = 0


def _answers(v):
  if isinstance(v, str):
    return [v]
  if isinstance(v, (list, tuple)) or type(v).__name__ == "ndarray":
    return [str(a) for a in v if str(a).strip()]
  return None


def normalize_row(obj, where: str):
  """A QA dict in our form, or None when it has no answer; DgpoError on a bad schema."""
  if not isinstance(obj, dict):
    fail(f"{where}: expected a JSON object, got {type(obj).__name__}")
  q = obj.get("question")
  if q is None and "prompt" in obj:  # Search-R1 parquet: chat messages
    msgs = obj["prompt"]
    q = next((m.get("content") for m in reversed(list(msgs)) if m.get("role") == "user"), None)
  if not isinstance(q, str) or not q.strip():
    fail(f"{where}: no 'question' string (accepted schemas: {'; '.join(SCHEMAS)})")
  if "golden_answers" in obj:
    ans = _answers(obj["golden_answers"])
  elif "answer" in obj:
    ans = _answers(obj["answer"])
  elif "reward_model" in obj:
    try:
      ans = _answers(obj["reward_model"]["ground_truth"]["target"])
    except (KeyError, TypeError):
      ans = None
  else:
    fail(f"{where}: no answer field (accepted schemas: {'; '.join(SCHEMAS)})")
  if ans is None:
    fail(f"{where}: answers must be a string or a list of strings")
  row = {k: v for k, v in obj.items() if k not in ("answer", "golden_answers")}
  row.update(question=q, golden_answers=ans)
  row.setdefault("id", where.rsplit(":", 1)[-1])
  return row if ans else None


def read_qa(spec: str) -> QAFile:
  """Reads `[name=]path` (.jsonl or .parquet), or `[name=]tfds:DIR:SPLIT` (a dataset made by
  `python -m dgpo_jax.data.tfds_qa`, optional extra); the name defaults to the file's stem."""
  name, _, path = spec.rpartition("=")
  if path.startswith("tfds:"):
    data_dir, _, split = path[len("tfds:"):].rpartition(":")
    from dgpo_jax.data import tfds_qa
    rows = tfds_qa.read_rows(data_dir, split)
    if not rows:
      fail(f"{path}: no usable questions")
    return QAFile(name or split, rows)
  if not os.path.isfile(path):
    fail(f"QA file {path}: no such file")
  name = name or os.path.splitext(os.path.basename(path))[0]
  out = QAFile(name, [])
  if path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ImportError:
      fail(f"{path}: reading parquet needs pyarrow (pip install pyarrow)")
    records = ((f"{path}:row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist()))
  else:
    def lines():
      with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
          where = f"{path}:{i}"
          try:
            text = raw.decode("utf-8")
          except UnicodeDecodeError as e:
            fail(f"{where}: not UTF-8 ({e.reason} at byte {e.start})")
          if not text.strip():
            continue
          try:
            yield where, json.loads(text)
          except json.JSONDecodeError as e:
            fail(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
    records = lines()
  for where, obj in records:
    row = normalize_row(obj, where)
    if row is None:
      out.skipped_no_answer += 1
    else:
      out.rows.append(row)
  if not out.rows:
    fail(f"{path}: no usable questions ({out.skipped_no_answer} without answers)")
  return out
