"""One point of a scaling sweep: student size × teacher size × method, at paper settings.

The variant string names the point: `student=PRESET,teacher=PRESET,method=NAME[,seed=N]`
(presets from dgpo_jax.models.config.PRESETS, which also fix the checkpoint directories
`/models/<preset>` unless overridden). `python -m dgpo_jax.sweep` prints one command per point.

  python -m dgpo_jax.main \
      --config=configs/sweep.py:student=qwen2.5-0.5b,teacher=qwen2.5-7b,method=dgpo \
      --workdir=/ckpt/sweep/q05-q7-dgpo
      # paper-scale hardware (8 × 80 GB GPUs); check a point first with dgpo_jax.plan
"""

from configs import common


def get_config(arg: str = ""):
  point = dict(student="qwen2.5-0.5b", teacher="qwen2.5-3b", method="dgpo", seed="0")
  for part in filter(None, arg.split(",")):
    key, sep, value = part.partition("=")
    if not sep or key not in point:
      raise ValueError(f"configs/sweep.py: bad point item {part!r} (keys: {', '.join(point)})")
    point[key] = value
  c = common.paper_scale(student_path=f"/models/{point['student']}",
                         student_preset=point["student"],
                         teacher_path=f"/models/{point['teacher']}",
                         teacher_preset=point["teacher"])
  c.method = point["method"]
  c.seed = int(point["seed"])
  return c
