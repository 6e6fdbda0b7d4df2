"""The embedded default: a tiny random-init Llama-family model, trained from scratch.

Until the synthetic agentic-RAG world lands (issue 4) this config pretrains a tiny model on
the real 1,000-passage Wikipedia sample with a SentencePiece tokenizer trained on it (the
action tags are single tokens), checkpointing and resuming, then samples from it.

  python -m dgpo_jax.main --config=configs/synthetic.py --workdir=/tmp/dgpo_synth
      # ~2 min on 2 CPU cores (300 steps, batch 16 × 128 tokens)
  python -m dgpo_jax.main --config=configs/synthetic.py:smoke --workdir=/tmp/dgpo_smoke
      # ~20 s: the end-to-end test's config
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base()
  c.model.name = "tiny-llama"
  c.model.init = "random"
  c.model.d_model = 128
  c.model.n_layers = 4
  c.model.n_heads = 4
  c.model.n_kv_heads = 2
  c.model.d_ff = 384
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 2048
  c.data.seq_len = 128
  c.train.steps = 300
  c.train.batch_size = 16
  c.train.lr = 1e-3
  c.train.warmup_steps = 20
  c.train.ckpt_every = 100
  c.generate.prompts = ("The capital of France is", "Evan Morris was")
  if arg == "smoke":
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.d_ff = 128
    c.tokenizer.vocab_size = 512
    c.data.max_docs = 200
    c.data.seq_len = 64
    c.train.steps = 12
    c.train.batch_size = 8
    c.train.warmup_steps = 2
    c.train.log_every = 4
    c.train.ckpt_every = 6
    c.generate.max_new_tokens = 8
  elif arg:
    raise ValueError(f"configs/synthetic.py: unknown variant {arg!r} (known: smoke)")
  return c
