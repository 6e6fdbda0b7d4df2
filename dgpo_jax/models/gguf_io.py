"""GGUF checkpoints: dequantize with the `gguf` package into our param layout.

llama.cpp's converter permutes the rows of `attn_q` / `attn_k` of llama-architecture models
for its interleaved RoPE; we undo that so one half-split RoPE serves every source.
"""

import json
import os

import numpy as np

from dgpo_jax.models.config import ModelConfig
from dgpo_jax.models.tokenizer import tokenizer_json_from_gguf
from dgpo_jax.utils.errors import fail

_ARCH_FAMILY = {"llama": "llama", "qwen2": "qwen2"}
_GGUF_LAYER = {  # our block key → GGUF tensor suffix
    "attn_norm": "attn_norm.weight", "mlp_norm": "ffn_norm.weight",
    "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
    "wo": "attn_output.weight", "w_gate": "ffn_gate.weight", "w_up": "ffn_up.weight",
    "w_down": "ffn_down.weight", "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias",
}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation; w is (out, in) or (out,)."""
  shape = w.shape
  return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def read_gguf(path: str):
  """(metadata dict, GGUFReader)."""
  import gguf
  if not os.path.isfile(path):
    fail(f"GGUF file not found: {path}")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # gguf raises ValueError/struct errors on bad files
    fail(f"{path}: not a readable GGUF file ({e})")
  meta = {}
  for key, field in reader.fields.items():
    try:
      meta[key] = field.contents()
    except Exception:  # a few exotic field types; none we need
      continue
  return meta, reader


def config_from_gguf(meta: dict, path: str = "GGUF") -> ModelConfig:
  arch = meta.get("general.architecture")
  if arch not in _ARCH_FAMILY:
    fail(f"{path}: GGUF architecture {arch!r} is not supported (expected llama or qwen2)")
  g = lambda k, d=None: meta.get(f"{arch}.{k}", d)
  n_heads = int(g("attention.head_count"))
  d_model = int(g("embedding_length"))
  vocab = g("vocab_size") or len(meta["tokenizer.ggml.tokens"])
  eos = meta.get("tokenizer.ggml.eos_token_id")
  return ModelConfig(
      family=_ARCH_FAMILY[arch], vocab_size=int(vocab), d_model=d_model,
      n_layers=int(g("block_count")), n_heads=n_heads,
      n_kv_heads=int(g("attention.head_count_kv", n_heads)), d_ff=int(g("feed_forward_length")),
      head_dim=int(g("attention.key_length", d_model // n_heads)),
      rope_theta=float(g("rope.freq_base", 10000.0)),
      rms_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
      qkv_bias=(arch == "qwen2"), tie_embeddings=True,  # fixed below from the tensors
      max_seq_len=int(g("context_length", 4096)),
      bos_id=meta.get("tokenizer.ggml.bos_token_id"),
      eos_ids=(int(eos),) if eos is not None else (),
      pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos or 0)))


def load_gguf_params(path: str, param_dtype: str = "float32"):
  """Dequantizes a GGUF checkpoint.

  Returns:
    (cfg, params, meta): params in our layout (numpy), meta the GGUF metadata.
  """
  import gguf
  meta, reader = read_gguf(path)
  cfg = config_from_gguf(meta, path)
  tensors = {t.name: t for t in reader.tensors}
  cfg = cfg.replace(tie_embeddings="output.weight" not in tensors, param_dtype=param_dtype)
  dt = np.dtype(cfg.jnp_param_dtype)

  def get(name, shape):
    if name not in tensors:
      fail(f"{path}: missing tensor {name} (expected shape {shape})")
    t = tensors[name]
    arr = gguf.quants.dequantize(t.data, t.tensor_type)
    arr = np.asarray(arr, np.float32).reshape([int(x) for x in reversed(t.shape)])
    if tuple(arr.shape) != tuple(shape):
      fail(f"{path}: tensor {name} has shape {arr.shape}, expected {tuple(shape)}")
    return arr

  D, H, KV, hd, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, \
      cfg.vocab_size
  permuted = cfg.family == "llama"
  per_layer = {
      "attn_norm": ((D,), lambda w: w), "mlp_norm": ((D,), lambda w: w),
      "wq": ((H * hd, D), lambda w: (_unpermute(w, H) if permuted else w).T.reshape(D, H, hd)),
      "wk": ((KV * hd, D), lambda w: (_unpermute(w, KV) if permuted else w).T.reshape(D, KV, hd)),
      "wv": ((KV * hd, D), lambda w: w.T.reshape(D, KV, hd)),
      "wo": ((D, H * hd), lambda w: w.T.reshape(H, hd, D)),
      "w_gate": ((F, D), lambda w: w.T), "w_up": ((F, D), lambda w: w.T),
      "w_down": ((D, F), lambda w: w.T),
  }
  if cfg.qkv_bias:
    per_layer.update({"bq": ((H * hd,), lambda w: w.reshape(H, hd)),
                      "bk": ((KV * hd,), lambda w: w.reshape(KV, hd)),
                      "bv": ((KV * hd,), lambda w: w.reshape(KV, hd))})
  blocks = {k: np.stack([fn(get(f"blk.{i}.{_GGUF_LAYER[k]}", shape)).astype(dt)
                         for i in range(cfg.n_layers)])
            for k, (shape, fn) in per_layer.items()}
  params = {"embed": get("token_embd.weight", (V, D)).astype(dt),
            "final_norm": get("output_norm.weight", (D,)).astype(dt), "blocks": blocks}
  if not cfg.tie_embeddings:
    params["lm_head"] = get("output.weight", (V, D)).T.astype(dt)
  return cfg, params, meta


def gguf_to_hf_dir(gguf_path: str, out_dir: str):
  """Converts a GGUF file into an HF directory (f32 safetensors, config, tokenizer)."""
  from dgpo_jax.models.hf_io import export_hf
  cfg, params, meta = load_gguf_params(gguf_path)
  tok_json = tokenizer_json_from_gguf(meta)
  tok_cfg = {"chat_template": meta.get("tokenizer.chat_template"),
             "bos_token": _tok(meta, "bos"), "eos_token": _tok(meta, "eos"),
             "pad_token": _tok(meta, "padding"), "unk_token": _tok(meta, "unknown"),
             "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
             "model_max_length": cfg.max_seq_len, "tokenizer_class": "GPT2Tokenizer",
             "clean_up_tokenization_spaces": False}
  export_hf(out_dir, cfg, params, extra_files={
      "tokenizer.json": tok_json, "tokenizer_config.json": json.dumps(tok_cfg, indent=2),
      "SOURCE.txt": f"converted from {os.path.basename(gguf_path)} "
                    f"(GGUF {meta.get('general.name')!r}) by dgpo_jax.models.gguf_io\n"})
  return cfg


def _tok(meta, which):
  i = meta.get(f"tokenizer.ggml.{which}_token_id")
  return meta["tokenizer.ggml.tokens"][int(i)] if i is not None else None
