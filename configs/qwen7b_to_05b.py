"""DGPO with a larger teacher: Qwen2.5-7B (Search-R1 PPO) → Qwen2.5-0.5B (paper: PPO 0.238 →
DGPO 0.323 avg EM). Reference hyperparameters from `common.paper_scale`.

Hardware: 8 × 80 GB GPUs (the frozen bf16 7B teacher adds ~15 GB, sharded over fsdp).

  python -m dgpo_jax.main --config=configs/qwen7b_to_05b.py --workdir=/ckpt/dgpo_q7_05 \
      --config.model.name=/models/Qwen2.5-0.5B-Instruct \
      --config.teacher_model.name=/models/SearchR1-qwen2.5-7b-ppo
  python -m dgpo_jax.plan --config=configs/qwen7b_to_05b.py --mesh=fsdp:8 --device_memory_gb=80
"""

from configs import common


def get_config(arg: str = ""):
  c = common.paper_scale(student_path="/models/Qwen2.5-0.5B-Instruct", student_preset="qwen2.5-0.5b",
                         teacher_path="/models/SearchR1-qwen2.5-7b-ppo", teacher_preset="qwen2.5-7b")
  if arg:
    raise ValueError(f"configs/qwen7b_to_05b.py: unknown variant {arg!r}")
  return c
