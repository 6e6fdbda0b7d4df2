"""DGPO at paper scale: Qwen2.5-3B Search-R1 teacher → Qwen2.5-0.5B student, E5 over wiki-18.

Reference hyperparameters (../shared/reference/dgpo.md): batch 512 questions, mini-batch 256,
micro-batch 128, 1 PPO epoch, actor lr 1e-6 (warmup 0.285), critic lr 1e-5 (warmup 0.015),
GAE γ = λ = 1, clip 0.2, value clip 0.5, entropy 0.001, β = 0.001 (k1, wrong rows only),
KD λ = 1.0 for 5 epochs, 4 turns, top-3 documents, 500-token turns and observations,
≤ 1000 PPO steps, checkpoint every 50, validation every 200.

Hardware: 8 GPUs with ≥ 80 GB (the paper: 8×H200, about a day), or a TPU slice of similar
memory; params, optimizer state and the frozen teacher are sharded over `fsdp`.

  python -m dgpo_jax.main --config=configs/qwen05b.py --workdir=/ckpt/dgpo_qwen05b \
      --config.model.name=/models/Qwen2.5-0.5B-Instruct \
      --config.teacher_model.name=/models/SearchR1-qwen2.5-3b-ppo \
      --config.retrieval.index=/indexes/wiki18_e5_scann \
      --config.data.train=/data/nq_hotpotqa/train.jsonl \
      --config.data.dev=/data/nq_hotpotqa/dev.jsonl --config.data.test=/data/nq/test.jsonl

Paths are config fields; none of these weights exist on the CPU development machines. The
shapes alone are checked there: `tests/test_configs.py` compiles the KD and PPO steps of this
config from abstract shapes on 8 fake CPU devices.
"""

from configs import common


def get_config(arg: str = ""):
  c = common.paper_scale(student_path="/models/Qwen2.5-0.5B-Instruct", student_preset="qwen2.5-0.5b",
                         teacher_path="/models/SearchR1-qwen2.5-3b-ppo", teacher_preset="qwen2.5-3b")
  if arg == "plan_small":  # a cheaper shape check: short sequences, small mini-batch
    c.ppo.update(questions_per_step=16, mini_batch=16, micro_batches=2)
    c.kd.batch_size = 8
    c.plan.seq_len = 128
  elif arg:
    raise ValueError(f"configs/qwen05b.py: unknown variant {arg!r} (known: plan_small)")
  return c
