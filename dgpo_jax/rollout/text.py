"""The reference's fixed texts, action parsing, and neutralizing untrusted documents."""

import re
from typing import Optional

PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first "
    "every time you get new information. After reasoning, if you find you lack some knowledge, "
    "you can call a search engine by <search> query </search> and it will return the top "
    "searched results between <information> and </information>. You can search as many times "
    "as your want. If you find no further external knowledge needed, you can directly provide "
    "the answer inside <answer> and </answer>, without detailed illustrations. For example, "
    "<answer> Beijing </answer>. Question: {question}\n")

INVALID_ACTION = (
    "\nMy previous action is invalid. If I want to search, I should put the query between "
    "<search> and </search>. If I want to give the final answer, I should put the answer between "
    "<answer> and </answer>. Let me try again.\n")

INFO_OPEN, INFO_CLOSE = "\n\n<information>", "</information>\n\n"

_TAG_RE = re.compile(r"<\s*(/?)\s*(information|answer|search|think)\s*>", re.IGNORECASE)


def user_message(question: str) -> str:
  """The reference user message: question stripped, '?' appended when missing."""
  q = question.strip()
  if q and not q.endswith("?"):
    q += "?"
  return PROMPT.format(question=q)


def neutralize(text: str, max_chars: int) -> str:
  """Makes retrieved text inert: action tags and chat special-token markers can neither close
  the information block nor be read as an answer or query; bounded to `max_chars`."""
  text = text[:max_chars]
  text = _TAG_RE.sub(lambda m: f"[{m.group(1)}{m.group(2).lower()}]", text)
  return text.replace("<|", "< |").replace("|>", "| >")


def last_block(text: str, tag: str) -> Optional[str]:
  """Content of the last `<tag>…</tag>` in text (stripped), or None: the reference's
  `re.finditer(r"<tag>(.*?)</tag>", text, re.DOTALL)`, last match (non-greedy, so the
  content never holds the closing tag)."""
  last = None
  for last in _block_re(tag).finditer(text):
    pass
  return None if last is None else last.group(1).strip()


_BLOCK_RES = {}


def _block_re(tag):
  if tag not in _BLOCK_RES:
    _BLOCK_RES[tag] = re.compile(f"<{tag}>(.*?)</{tag}>", re.DOTALL)
  return _BLOCK_RES[tag]


def classify_turn(turn_text: str, search_allowed: bool):
  """('answer', text) | ('search', query) | ('invalid', None) for one generated turn.

  The turn was cut at the first closing tag, so the action is the tag it ends with.
  """
  ans_at, search_at = turn_text.rfind("</answer>"), turn_text.rfind("</search>")
  if ans_at >= 0 and ans_at > search_at:
    a = last_block(turn_text, "answer")
    if a is not None:
      return "answer", a
  if search_allowed and search_at >= 0:
    q = last_block(turn_text, "search")
    if q is not None:
      return "search", q
  return "invalid", None


def extract_answer(response_text: str) -> Optional[str]:
  """The last <answer>…</answer> of a response (the prompt's example tag is not in it)."""
  return last_block(response_text, "answer")
