"""The KD stage's update on the synthetic default's shapes: what the teacher cache and
building the update once per stage buy.

    python -m benchmarks.kd_step [--widths=320,512,704] [--out=FILE.json]

Student 48x2x144 and teacher 128x4x384 (the default's pair), vocabulary 1,550 (seed 0's),
16 rows per step, one target in seven model-generated (as in TGO trajectories). For each
width, in the same run:

  teacher_in_step  the KD update (`pipeline.steps.kd_update`) running the frozen teacher's
                   forward every step (`kd.cache_teacher=False`)
  cached           the same update reading the teacher's states at the loss positions from
                   the batch (`kd.cache_teacher=True`)
  cache_build      computing those states once for the 16 rows (`method.teacher_cache`)
  rebuild          building the update anew and making its first call with XLA's
                   compilation cache warm: what each KD epoch and SFT chunk paid before the
                   update was built once per stage (`train.loop.fit_update`)

Step figures are medians of timed repeats after a compile call, single-threaded XLA:CPU as
the default runs (`--xla_cpu_multi_thread_eigen=false`, set here before JAX starts).
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_multi_thread_eigen=false").strip()

import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import emit, width_args  # noqa: E402
from benchmarks.train_step import _median_s  # noqa: E402
from dgpo_jax.data import lm_data  # noqa: E402
from dgpo_jax.models import config as model_config  # noqa: E402
from dgpo_jax.models.decoder import Decoder  # noqa: E402
from dgpo_jax.parallel import sharding  # noqa: E402
from dgpo_jax.pipeline import method, steps  # noqa: E402
from dgpo_jax.train import lm  # noqa: E402
from dgpo_jax.train.step import Model, place  # noqa: E402
from dgpo_jax.utils import cli  # noqa: E402
from configs import synthetic  # noqa: E402

ROWS, VOCAB = 16, 1550


def model(mesh, d, l, ff, seed):
  cfg = model_config.preset("tiny-llama", d_model=d, n_layers=l, n_heads=4, n_kv_heads=2,
                            d_ff=ff, vocab_size=VOCAB, max_seq_len=4096, scan_unroll=l,
                            attn_chunk=128)
  gd, params, sh = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)), mesh)
  return Model(cfg, gd, params, sh)


def batch(width, rng):
  tokens = rng.integers(3, VOCAB, (ROWS, width + 1)).astype(np.int32)
  mask = np.ones_like(tokens)
  gen = (rng.random(tokens.shape) < 1 / 7).astype(np.int32)
  gen[:, 0] = 0
  return {"tokens": tokens, "mask": mask, "gen": gen}


def kd_call(config, student, teacher, mesh, data):
  """(a call of one KD update on `data`, seconds spent caching the teacher's states,
  seconds from building the update to the end of its first call)."""
  t_build = time.perf_counter()
  built = steps.kd_update(config, student, teacher, mesh, "ce_fkl", 1.0, 100)
  update, state_sh, _ = built
  k = lm_data.loss_caps(data["mask"].sum(1), data["gen"])
  host = {"tokens": data["tokens"], "mask": data["mask"], "loss_mask": data["gen"],
          "loss_idx": lm_data.loss_positions(data["gen"], max(k.values())),
          "step": np.zeros((ROWS,), np.int32), "lam": np.ones((ROWS,), np.float32)}
  t0 = time.perf_counter()
  if config.kd.cache_teacher:
    host["teacher_h"] = method.teacher_cache(teacher, data, ROWS, mesh)
  cache_s = time.perf_counter() - t0
  tx = lm.make_optimizer(1e-3, 100, 10)
  box = [jax.jit(lambda p: lm.init_state(p, tx), out_shardings=state_sh)(student.params)]
  placed = place(host, update.batch_sh)

  def one():
    box[0], m = update(box[0], placed, jax.random.key(0), teacher.params)
    return m["loss"]

  jax.block_until_ready(one())
  return one, cache_s, time.perf_counter() - t_build - cache_s


def main():
  args = width_args(__doc__, "320,512,704")
  cli.compilation_cache(tempfile.mkdtemp(prefix="kd_step_xla_"))
  mesh = sharding.make_mesh()
  student, teacher = model(mesh, 48, 2, 144, 0), model(mesh, 128, 4, 384, 1)
  rows = []
  for w in (int(x) for x in args.widths.split(",")):
    data = batch(w, np.random.default_rng(w))
    row = {"width": w}
    for cache in (False, True):
      config = synthetic.get_config()
      config.kd.cache_teacher = cache
      one, cache_s, _ = kd_call(config, student, teacher, mesh, data)
      row["cached_step_s" if cache else "teacher_in_step_step_s"] = _median_s(one, args.repeats)
      if cache:
        row["cache_build_s"] = cache_s
    # a fresh build and its first call, with XLA's compilation cache now warm
    row["rebuild_first_call_s"] = kd_call(config, student, teacher, mesh, data)[2]
    row["cached_over_teacher_in_step"] = row["cached_step_s"] / row["teacher_in_step_step_s"]
    rows.append(row)
    print(f"width {w}: teacher in step {row['teacher_in_step_step_s'] * 1e3:.0f} ms, cached "
          f"{row['cached_step_s'] * 1e3:.0f} ms, rebuild {row['rebuild_first_call_s']:.2f} s",
          flush=True)
  emit({"benchmark": "kd_step", "backend": jax.default_backend(), "rows": ROWS,
        "vocab": VOCAB, "student": "48x2x144", "teacher": "128x4x384", "results": rows},
       args.out)


if __name__ == "__main__":
  main()
