"""Exact Match and token F1 exactly as the reference computes them."""

import collections
import re
import string
from typing import Optional, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
  """lowercase → drop punctuation → articles to spaces → collapse whitespace."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in _PUNCT)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def exact_match(prediction: Optional[str], golden: Sequence[str]) -> float:
  if prediction is None:
    return 0.0
  p = normalize_answer(prediction)
  return float(any(p == normalize_answer(g) for g in golden))


def token_f1(prediction: Optional[str], golden: Sequence[str]) -> float:
  """Max over golden answers of the SQuAD-style token F1 (after normalization)."""
  if prediction is None or not golden:
    return 0.0
  p = normalize_answer(prediction).split()
  best = 0.0
  for g in golden:
    gt = normalize_answer(g).split()
    common = collections.Counter(p) & collections.Counter(gt)
    same = sum(common.values())
    if same == 0:
      continue
    prec, rec = same / len(p), same / len(gt)
    best = max(best, 2 * prec * rec / (prec + rec))
  return best
