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
  c = common.base()
  c.stage = "train"
  c.method = "dgpo"
  c.mesh = "fsdp:-1"
  c.model.name = "/models/Qwen2.5-0.5B-Instruct"  # HF directory (or .gguf)
  c.model.init = "pretrained"
  c.model.preset = "qwen2.5-0.5b"
  c.model.param_dtype = "float32"  # trained params and optimizer state in f32
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.teacher_model.name = "/models/SearchR1-qwen2.5-3b-ppo"
  c.teacher_model.preset = "qwen2.5-3b"
  c.teacher_model.param_dtype = "bfloat16"  # frozen
  c.teacher_model.dtype = "bfloat16"
  c.tokenizer.kind = "model"
  c.retrieval.encoder = "e5-base-v2"
  c.retrieval.kind = "scann"
  c.retrieval.index = "/indexes/wiki18_e5_scann"
  c.retrieval.topk = 3
  c.data.train = "/data/nq_hotpotqa/train.jsonl"
  c.data.dev = "/data/nq_hotpotqa/dev.jsonl"
  c.data.test = "/data/nq/test.jsonl"
  c.rollout.max_turns = 4
  c.rollout.max_turn_tokens = 500
  c.rollout.max_obs_tokens = 500
  c.tgo.num_questions = 20000
  c.kd.update(lam=1.0, epochs=5, batch_size=64, lr=1e-5, warmup_steps=20)
  c.ppo.update(steps=1000, questions_per_step=512, mini_batch=256, micro_batches=2, epochs=1,
               actor_lr=1e-6, actor_warmup_ratio=0.285, critic_lr=1e-5,
               critic_warmup_ratio=0.015, beta=0.001, kl_estimator="k1", kl_rows="wrong",
               val_every=200)
  c.train.ckpt_every = 50
  c.eval.update(num_questions=100000, val_questions=1000, rl_val_questions=500, batch_size=256)
  c.kernel.update(impl="jnp", chunk=8192, block=1024)
  c.plan.seq_len = 4096
  if arg == "plan_small":  # a cheaper shape check: short sequences, small mini-batch
    c.ppo.update(questions_per_step=16, mini_batch=8, micro_batches=2)
    c.plan.seq_len = 128
  elif arg:
    raise ValueError(f"configs/qwen05b.py: unknown variant {arg!r} (known: plan_small)")
  return c
