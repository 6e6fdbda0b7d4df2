"""Shared config parts. Config files call `base()` and override fields.

Fields (all runs):
  seed: every random choice (init, data order, sampling) derives from it.
  stage: what `main` runs. "train": the DGPO pipeline (setup → the method's stages → test
    evaluation → results.json, report.md; docs/training.md); "prepare": the synthetic
    world's preparation only; "lm": LM steps on the corpus, then a sample generation;
    "generate": load the model and generate for `generate.prompts` only.
  method / ablation: which training plan (dgpo, ppo, sft_ppo, kd, distillm, taid, gkd,
    grpo; ablations of dgpo), see dgpo_jax/pipeline/method.py.
  tgo / kd / ppo / kernel / eval: the pieces of the plan (reference values by default).
  teacher_model: the frozen teacher for pretrained-model runs; data.train/dev/test: QA files.
  model.name: a preset shape (dgpo_jax.models.config.PRESETS) for random init, or a
    pretrained model (a name like smollm2-135m, an HF directory, a .gguf file).
  model.init: "random" (preset shape) or "pretrained".
  mesh: device mesh, e.g. "data:-1" or "data:2,fsdp:2,tensor:2" (see docs/sharding.md).
  sharding_rules: logical axis → mesh axes table.
"""

import os

import ml_collections

from dgpo_jax.parallel.sharding import DEFAULT_RULES

SHARED_DATA = os.environ.get(
    "DGPO_SHARED_DATA",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                 "data"))
WIKI_SAMPLE = os.path.join(SHARED_DATA, "flashrag-sample", "corpus.jsonl")


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stage = "lm"

  c.model = ml_collections.ConfigDict()
  c.model.name = "tiny-llama"
  c.model.init = "random"
  c.model.param_dtype = "float32"  # bfloat16 on accelerators
  c.model.dtype = "float32"
  c.model.remat = False
  c.model.preset = ""  # shape preset for ahead-of-time plans (dgpo_jax.pipeline.aot)
  # Shape overrides for random init (0 = keep the preset's value).
  c.model.d_model = 0
  c.model.n_layers = 0
  c.model.n_heads = 0
  c.model.n_kv_heads = 0
  c.model.d_ff = 0

  # The teacher (distillation, TGO, DGPO's KL target): a pretrained model spec like
  # model.name; frozen, so it can be stored in bf16.
  c.teacher_model = ml_collections.ConfigDict()
  c.teacher_model.name = ""
  c.teacher_model.preset = ""
  c.teacher_model.param_dtype = "float32"
  c.teacher_model.dtype = "float32"

  c.plan = ml_collections.ConfigDict()
  c.plan.seq_len = 2048  # tokens per trajectory in ahead-of-time plans

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.kind = "model"  # "model": the pretrained model's own; "sentencepiece": train one
  c.tokenizer.vocab_size = 2048
  # "sentencepiece": the longest piece in characters (0: SentencePiece's default, 16)
  c.tokenizer.max_piece_length = 0

  c.data = ml_collections.ConfigDict()
  c.data.corpus = WIKI_SAMPLE
  c.data.seq_len = 128
  c.data.max_docs = 0  # 0 = all
  # QA files ([name=]path, FlashRAG jsonl or Search-R1 parquet) for pretrained-model runs.
  c.data.train = ""
  c.data.dev = ""
  c.data.test = ""
  # SFT and KD batches are cut to their longest row rounded up to this many tokens: each
  # width is one compiled train step. 64 keeps padding small on CPU, where a compilation
  # costs seconds; on a GPU each costs tens of seconds (docs/scaling.md, the H200 run).
  c.data.width_multiple = 64

  # Extra XLA flags, appended to $XLA_FLAGS by `main` before the backend starts.
  c.xla_flags = ""
  c.mesh = "data:-1"
  c.sharding_rules = DEFAULT_RULES

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100
  c.train.batch_size = 8
  c.train.lr = 3e-4
  c.train.warmup_steps = 10
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.log_every = 10
  c.train.ckpt_every = 50
  c.train.keep_ckpts = 2

  # The search tool. index="" builds one for data.corpus into the cache on first use;
  # url="" searches locally, otherwise a Search-R1-compatible server is used.
  c.retrieval = ml_collections.ConfigDict()
  c.retrieval.index = ""
  c.retrieval.encoder = "minilm"
  c.retrieval.kind = "auto"  # auto | scann | exact (dense), ignored for bm25
  c.retrieval.url = ""
  c.retrieval.topk = 3

  # Agentic rollout (reference values).
  c.rollout = ml_collections.ConfigDict()
  c.rollout.max_turns = 4
  c.rollout.max_turn_tokens = 500
  c.rollout.max_obs_tokens = 500
  c.rollout.temperature = 1.0
  c.rollout.top_p = 1.0
  # The reference caps the rolling context at max_prompt_length = 4,096 tokens; a row whose
  # next observation and turn would not fit ends (flag context_full). 0 = no cap.
  c.rollout.max_context = 4096

  # DGPO training (stage "train"): method, ablation and their pieces (reference values).
  c.method = "dgpo"  # dgpo | ppo | sft_ppo | kd | distillm | taid | gkd | grpo
  c.ablation = ""  # no_cold_start | uniform_kl | no_teacher_guidance | inverted | kd_with_incorrect_tgo

  c.tgo = ml_collections.ConfigDict()
  c.tgo.num_questions = 1000  # training questions the teacher answers (≤ 0: all of them)
  c.tgo.temperature = 1.0  # 0 = greedy
  c.tgo.keep_incorrect = False

  c.kd = ml_collections.ConfigDict()
  c.kd.lam = 1.0  # L = CE + λ·KL(π_t ‖ π_s)
  c.kd.epochs = 5
  c.kd.batch_size = 16
  c.kd.lr = 1e-5
  c.kd.warmup_steps = 10
  # AdamW's decoupled decay in KD; the paper gives none, and its repo has no KD code
  c.kd.weight_decay = 0.0
  c.kd.em_threshold = 0.0  # switch to RL once validation EM reaches it (0 = after the epochs)
  c.kd.val_every = 1  # validation EM (eval.val_questions) after every N-th epoch and the last
  c.kd.skew_alpha = 0.1  # DistiLLM
  c.kd.jsd_beta = 0.5  # GKD
  # The teacher's hidden states at the trajectories' loss positions computed once per KD
  # stage and kept in host memory (N·K·d_model floats), instead of a teacher forward every
  # step: the same loss, about a third less work per step where the teacher is larger
  # (docs/benchmarks.md). Off by default: at paper scale the cache is hundreds of GB.
  c.kd.cache_teacher = False

  c.ppo = ml_collections.ConfigDict()
  c.ppo.steps = 1000
  c.ppo.questions_per_step = 512
  c.ppo.group_size = 5  # GRPO samples per question
  c.ppo.mini_batch = 256
  c.ppo.micro_batches = 2
  c.ppo.epochs = 1
  c.ppo.actor_lr = 1e-6
  c.ppo.actor_warmup_ratio = 0.285
  c.ppo.critic_lr = 1e-5
  c.ppo.critic_warmup_ratio = 0.015
  c.ppo.grad_clip = 1.0
  # The reference's optimizer (veRL's dp_actor/critic): AdamW β = (0.9, 0.999), weight decay
  # 0.01, linear warmup then a constant rate, its scheduler stepped once per PPO step.
  c.ppo.lr_schedule = "constant"  # constant | cosine (to 10% at ppo.steps)
  c.ppo.b2 = 0.999
  c.ppo.weight_decay = 0.01
  c.ppo.clip = 0.2
  c.ppo.vf_clip = 0.5
  c.ppo.ent_coef = 0.001
  c.ppo.gamma = 1.0
  c.ppo.lam = 1.0
  c.ppo.beta = 0.001
  # k1 (the reference's "kl") | k3 | full | low_var_kl (k3 clamped to ±10) | rkl | low_var_rkl
  c.ppo.kl_estimator = "k1"
  c.ppo.kl_rows = "wrong"  # DGPO's selective KL; the plan overrides it for baselines
  c.ppo.advantage = "gae"
  # The reference's critic head: a fresh token-classification head, N(0, 0.02) with a bias.
  c.ppo.critic_head_init = "normal"  # normal | zeros
  c.ppo.grpo_std = "unbiased"  # the reference's torch.std; "population" divides by n
  # The reference's critic: GAE, advantage whitening (unbiased variance) and the value loss
  # over the whole response, observation tokens included; "generated": model tokens only.
  c.ppo.critic_positions = "response"
  # How GRPO applies its KL to the reference model: "loss" (the reference's use_kl_loss:
  # kl_loss_coef × low_var_kl in the actor loss, none in the reward, as Search-R1's GRPO) or
  # "reward" (−β·KL on every row's tokens, as PPO).
  c.ppo.grpo_kl = "loss"
  c.ppo.kl_loss_coef = 0.001
  c.ppo.kl_loss_estimator = "low_var_kl"
  c.ppo.temperature = 1.0
  c.ppo.top_p = 1.0
  c.ppo.val_every = 200
  c.ppo.max_bad_steps = 3

  # The fused KL kernel: "jnp" (chunked, any backend), "pallas" (GPU), "naive" (reference).
  c.kernel = ml_collections.ConfigDict()
  c.kernel.impl = "jnp"
  c.kernel.chunk = 8192
  c.kernel.block = 1024

  c.eval = ml_collections.ConfigDict()
  c.eval.num_questions = 1000  # test questions
  c.eval.val_questions = 200  # dev questions for KD validation
  c.eval.rl_val_questions = 200
  c.eval.batch_size = 64
  c.eval.arcap_thinking = True  # ARCap Thinking (gold passages in context) in test evaluations

  c.generate = ml_collections.ConfigDict()
  c.generate.prompts = ("The capital of France is",)
  c.generate.max_new_tokens = 24
  c.generate.chat = False
  return c


def paper_scale(student_path, student_preset, teacher_path, teacher_preset):
  """The reference DGPO setup (../shared/reference/dgpo.md) for a student/teacher pair:
  batch 512, mini-batch 256, micro-batch 128, 1 PPO epoch, actor lr 1e-6 (warmup 0.285),
  critic lr 1e-5 (warmup 0.015), GAE γ = λ = 1, β = 0.001 (k1, wrong rows), KD λ = 1 for 5
  epochs, 4 turns, top-3 E5 documents from a ScaNN index of wiki-18, ≤ 1000 PPO steps.
  Model, index and data paths are config fields to override. `base()` already carries the
  reference rollout, KD, PPO and kernel values; only what differs is set here."""
  c = base()
  c.stage = "train"
  c.method = "dgpo"
  c.mesh = "fsdp:-1"
  c.model.name = student_path  # HF directory (or .gguf)
  c.model.init = "pretrained"
  c.model.preset = student_preset
  c.model.param_dtype = "float32"  # trained params and optimizer state in f32
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.teacher_model.name = teacher_path
  c.teacher_model.preset = teacher_preset
  c.teacher_model.param_dtype = "bfloat16"  # frozen
  c.teacher_model.dtype = "bfloat16"
  c.tokenizer.kind = "model"
  c.retrieval.encoder = "e5-base-v2"
  c.retrieval.kind = "scann"
  c.retrieval.index = "/indexes/wiki18_e5_scann"
  c.data.train = "/data/nq_hotpotqa/train.jsonl"
  c.data.dev = "/data/nq_hotpotqa/dev.jsonl"
  c.data.test = "/data/nq/test.jsonl"
  c.tgo.num_questions = 20000
  c.kd.update(batch_size=64, warmup_steps=20)
  c.train.ckpt_every = 50
  c.eval.update(num_questions=100000, val_questions=1000, rl_val_questions=500, batch_size=256)
  c.plan.seq_len = 4096
  # GPU tiles for the fused KL: token blocks of 8,192 keep each chunk's dots large. On an H100
  # at the Qwen shapes: 1.41x the naive step's time (blocks of 128: 11x), docs/fused_kl.md.
  c.kernel.update(block=8192, chunk=4096)
  return c
