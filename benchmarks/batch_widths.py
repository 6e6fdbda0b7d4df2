"""The batch widths the teacher's SFT compiles a step for, at several `data.width_multiple`s.

    python -m benchmarks.batch_widths --workdir=DIR [--multiples=64,512] [--variant=]
        [--steps=N] [--out=F.json]

DIR is a prepared workdir (or a scaling cell's `shared/`) holding one cached set of oracle
demonstrations, `world/sft_*.npz`. The batches are the pipeline's own (`prepare.sft_batches`
with the configs/synthetic.py variant `--variant`, world seed 0); `--steps` defaults to the
variant's `prep.sft_steps`. For each multiple: every width the SFT batches take and the first
step that takes it. Each new width is one more compiled train step (docs/scaling.md, the
H200 run). Prints JSON (and writes it to --out).
"""

import argparse
import glob
import os

import numpy as np

from benchmarks.common import emit


def widths(config, sft, steps: int) -> dict:
  """{width: first step with it} of the SFT batches over `steps` steps."""
  from dgpo_jax.pipeline import prepare
  batch = prepare.sft_batches(config, sft, 0)
  first = {}
  for s in range(steps):
    first.setdefault(int(batch(s)["tokens"].shape[1]), s)
  return dict(sorted(first.items()))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--multiples", default="64,512")
  ap.add_argument("--variant", default="")
  ap.add_argument("--steps", type=int, default=0)
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  from configs import synthetic
  files = glob.glob(os.path.join(a.workdir, "world", "sft_*.npz"))
  if len(files) != 1:
    raise SystemExit(f"error: {a.workdir}/world: expected one sft_*.npz, found {files or 'none'}")
  z = np.load(files[0])
  sft = (z["tokens"], z["mask"], z["loss_mask"])
  res = {"demonstrations": files[0], "rows": int(len(sft[0])), "by_multiple": {}}
  for m in (int(x) for x in a.multiples.split(",")):
    c = synthetic.get_config(a.variant)
    with c.unlocked():
      c.data.width_multiple = m
    steps = a.steps or c.prep.sft_steps
    res["steps"] = steps
    res["by_multiple"][m] = {"widths": len(w := widths(c, sft, steps)), "first_step": w}
  emit(res, a.out)


if __name__ == "__main__":
  main()
