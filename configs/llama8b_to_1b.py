"""DGPO across the Llama family: Llama-3.1-8B (Search-R1 PPO) → Llama-3.2-1B (paper: PPO
0.250 → DGPO 0.389 avg EM). Reference hyperparameters from `common.paper_scale`.

Hardware: 8 × 80 GB GPUs; the 1B student's f32 params, Adam state and critic (~20 GB) and the
bf16 8B teacher (~16 GB) are sharded over fsdp.

  python -m dgpo_jax.main --config=configs/llama8b_to_1b.py --workdir=/ckpt/dgpo_l8_1 \
      --config.model.name=/models/Llama-3.2-1B-Instruct \
      --config.teacher_model.name=/models/SearchR1-llama3.1-8b-ppo
  python -m dgpo_jax.plan --config=configs/llama8b_to_1b.py --mesh=fsdp:8 --device_memory_gb=80
"""

from configs import common


def get_config(arg: str = ""):
  c = common.paper_scale(student_path="/models/Llama-3.2-1B-Instruct", student_preset="llama-3.2-1b",
                         teacher_path="/models/SearchR1-llama3.1-8b-ppo", teacher_preset="llama-3.1-8b")
  if arg:
    raise ValueError(f"configs/llama8b_to_1b.py: unknown variant {arg!r}")
  return c
