"""How well each KD student fits the teacher's tokens on the TGO set it was distilled on.

    python -m benchmarks.kd_token_fit --workdir=DIR [--rows=64] [--out=...]

DIR is a synthetic run's workdir (one seed's: `models/`, `tgo/`). For the base student, the
teacher and every exported KD student (`models/student_kd-*`), on the first `--rows` correct
TGO trajectories, over the model-generated tokens only (what the KD losses train on):

- `ce`: mean −log q of the teacher's sampled token;
- `q_lt_1e-2`, `q_lt_1e-4`: the share of tokens whose probability under the model is below
  those values, and `ce_share_q_lt_1e-2`: their share of the CE;
- `skew_fkl`: the mean skew forward KL to the teacher, KL(π_t ‖ α π_t + (1−α) π_s) at the
  α the DistiLLM stage trains with (`kd.skew_alpha` of configs/synthetic.py), and
  `skew_at_cap`: the share of tokens within 10% of its bound −log α;
- `entropy`: the model's mean entropy there;
- `top_missed`: the teacher tokens most often given q < 1e-2, as (piece, count).

It explains a KD student that never answers (docs/results.md, DistiLLM): a loss can be low
while a minority of tokens are confidently wrong.
"""

import argparse
import glob
import os
import sys

import numpy as np

from benchmarks.common import emit
from configs import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHA = synthetic.get_config().kd.skew_alpha  # the skew DistiLLM's loss uses here


def _logprobs(model_dir, tokens_bt, mask_bt):
  """Next-token log-probs [B, T-1, V] of an exported model."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from dgpo_jax.models import registry
  lm = registry.load(model_dir)
  graphdef, params = registry.place_params(lm.cfg, lm.params)
  model = nnx.merge(graphdef, params)
  logits, _ = jax.jit(lambda t, v: model(t, valid_bt=v))(jnp.asarray(tokens_bt[:, :-1]),
                                                         jnp.asarray(mask_bt[:, :-1]))
  return np.asarray(jax.nn.log_softmax(logits, -1))


def _fit(lp_btv, lt_btv, targets_bt, w_bt, piece) -> dict:
  """The statistics of the module docstring for one model against the teacher."""
  from dgpo_jax.rl import fused_kl
  v = min(lp_btv.shape[-1], lt_btv.shape[-1])
  lp, lt = lp_btv[..., :v], lt_btv[..., :v]
  sel = w_bt > 0
  lq = np.take_along_axis(lp, targets_bt[..., None], -1)[..., 0][sel]
  # the very per-column terms the skew_fkl loss sums (`fused_kl.divergence_terms`)
  skew = np.asarray(fused_kl.divergence_terms("skew_fkl", lp[sel], lt[sel], None, ALPHA)).sum(-1)
  ent = -(np.exp(lp[sel]) * lp[sel]).sum(-1)
  ce = -lq
  low = lq < np.log(1e-2)
  ids, counts = np.unique(targets_bt[sel][low], return_counts=True)
  top = [(piece(int(i)), int(c)) for c, i in sorted(zip(counts, ids), reverse=True)[:8]]
  return {"tokens": int(sel.sum()), "ce": float(ce.mean()),
          "q_lt_1e-2": float(low.mean()), "q_lt_1e-4": float((lq < np.log(1e-4)).mean()),
          "ce_share_q_lt_1e-2": float(ce[low].sum() / max(ce.sum(), 1e-9)),
          "skew_fkl": float(skew.mean()),
          "skew_at_cap": float((skew > 0.9 * -np.log(ALPHA)).mean()),
          "entropy": float(ent.mean()), "top_missed": top}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--rows", type=int, default=64)
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  sys.path.insert(0, ROOT)
  os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  w = a.workdir
  tgo = sorted(glob.glob(os.path.join(w, "tgo", "*", "tgo_correct.npz")))
  if not tgo:
    sys.exit(f"kd_token_fit: no tgo/*/tgo_correct.npz under {w}")
  z = np.load(tgo[0])
  n = min(a.rows, len(z["tokens"]))
  width = int(z["mask"][:n].sum(1).max())
  tokens, mask = z["tokens"][:n, :width].astype(np.int32), z["mask"][:n, :width]
  targets, w_bt = tokens[:, 1:], z["gen"][:n, 1:width].astype(np.float32)
  from dgpo_jax.models.tokenizer import SentencePieceTokenizer
  tok = SentencePieceTokenizer(glob.glob(os.path.join(w, "tokenizer", "*.model"))[0],
                               chat_format="plain")
  piece = tok.sp.IdToPiece  # "▁" marks a word start
  lt = _logprobs(os.path.join(w, "models", "teacher"), tokens, mask)
  models = ["student", "teacher"] + sorted(
      os.path.basename(p) for p in glob.glob(os.path.join(w, "models", "student_kd-*")))
  rows = {m: _fit(_logprobs(os.path.join(w, "models", m), tokens, mask) if m != "teacher"
                  else lt, lt, targets, w_bt, piece) for m in models}
  emit({"benchmark": "kd_token_fit", "tgo": tgo[0], "rows": n, "alpha": ALPHA,
        "models": rows}, a.out)


if __name__ == "__main__":
  main()
