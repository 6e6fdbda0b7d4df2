"""Streaming reader for the FlashRAG / Search-R1 corpus format.

One JSON object per line: `{"id": str, "contents": "\"Title\"\ntext"}`. The title is the
first line of `contents` (quotes kept, as the reference does), the text the rest. Lines are
read one at a time, so a 21M-passage file never sits in memory.
"""

import dataclasses
import json
from typing import Iterator

from dgpo_jax.utils.errors import fail


@dataclasses.dataclass(frozen=True)
class Passage:
  id: str
  title: str
  text: str

  @property
  def contents(self) -> str:
    return f"{self.title}\n{self.text}"


def split_contents(contents: str) -> tuple[str, str]:
  title, _, text = contents.partition("\n")
  return title, text


def iter_records(path: str, skip_bad: bool = False, stats: dict | None = None
                 ) -> Iterator[tuple[int, int, Passage]]:
  """Yields (byte offset, line number, passage) for each valid record of a corpus .jsonl.

  Args:
    path: the file.
    skip_bad: skip malformed lines (counted in `stats["skipped"]`) instead of failing.
    stats: optional dict that receives counts ("read", "skipped").

  Raises:
    DgpoError: naming the file and line of the first malformed record (unless skip_bad).
  """
  stats = stats if stats is not None else {}
  stats.setdefault("read", 0)
  stats.setdefault("skipped", 0)
  try:
    fh = open(path, "rb")
  except OSError as e:
    fail(f"cannot open corpus {path}: {e.strerror}")
  with fh:
    offset = 0
    for lineno, raw in enumerate(fh, 1):
      start, offset = offset, offset + len(raw)
      if not raw.strip():
        continue
      try:
        rec = json.loads(raw.decode("utf-8"))
        if not isinstance(rec, dict):
          raise ValueError("record is not a JSON object")
        pid, contents = rec.get("id"), rec.get("contents")
        if pid is None or not isinstance(contents, str):
          raise ValueError("expected fields 'id' and 'contents' (string)")
      except (UnicodeDecodeError, ValueError) as e:
        if skip_bad:
          stats["skipped"] += 1
          continue
        fail(f"{path}:{lineno}: malformed corpus record ({str(e)[:200]}); "
             f"use --skip_bad to skip such lines")
      stats["read"] += 1
      title, text = split_contents(contents)
      yield start, lineno, Passage(str(pid), title, text)


def iter_corpus(path: str, skip_bad: bool = False, stats: dict | None = None) -> Iterator[Passage]:
  """Yields the passages of a corpus .jsonl file (see `iter_records`)."""
  for _, _, passage in iter_records(path, skip_bad, stats):
    yield passage
