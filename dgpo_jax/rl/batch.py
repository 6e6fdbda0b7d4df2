"""Trajectories → fixed-shape training arrays (host side, numpy).

Every row is prompt + response, right-padded to a bucketed width so jitted steps see few
distinct shapes. `gen` marks the model-generated tokens (the only ones any loss or KL
reward touches); `last` marks each row's final generated token (where the outcome reward
goes).
"""

from typing import Sequence

import numpy as np

from dgpo_jax.eval.metrics import exact_match
from dgpo_jax.utils import shapes


def to_arrays(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
              gen_masks: Sequence[Sequence[int]], pad_id: int, width: int = 0,
              multiple: int = 64) -> dict:
  """{"tokens", "mask", "gen", "last"} int32 [B, W] (W ≥ the longest row, bucketed)."""
  lens = [len(p) + len(r) for p, r in zip(prompts, responses)]
  w = width or shapes.round_up(max(lens) + 1, multiple)
  if max(lens) > w:
    raise ValueError(f"to_arrays: a row has {max(lens)} tokens, more than width {w}")
  b = len(prompts)
  out = {k: np.zeros((b, w), np.int32) for k in ("tokens", "mask", "gen", "last")}
  out["tokens"][:] = pad_id
  for i, (p, r, g) in enumerate(zip(prompts, responses, gen_masks)):
    n = len(p) + len(r)
    out["tokens"][i, :n] = list(p) + list(r)
    out["mask"][i, :n] = 1
    out["gen"][i, len(p):n] = g
    idx = np.nonzero(out["gen"][i])[0]
    if len(idx):
      out["last"][i, idx[-1]] = 1
  return out


def from_trajectories(trajs, golden: Sequence[Sequence[str]], pad_id: int,
                      width: int = 0) -> dict:
  """Arrays for rollout trajectories plus `score` [B] (EM of each row's final answer)."""
  arr = to_arrays([t.prompt_ids for t in trajs], [t.response_ids for t in trajs],
                  [t.loss_mask for t in trajs], pad_id, width)
  arr["score"] = np.asarray([exact_match(t.answer, g) for t, g in zip(trajs, golden)],
                            np.float32)
  return arr


def rollout_metrics(trajs, score) -> dict:
  n = max(len(trajs), 1)
  return {"em": float(np.mean(score)) if len(score) else 0.0,
          "searches_per_question": sum(t.num_searches for t in trajs) / n,
          "response_tokens": sum(sum(t.loss_mask) for t in trajs) / n,
          "response_length": sum(len(t.response_ids) for t in trajs) / n,
          "answered": sum(t.answer is not None for t in trajs) / n}
