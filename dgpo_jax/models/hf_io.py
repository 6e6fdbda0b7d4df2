"""Weights in and out in the transformers layout (config.json + safetensors).

Our params are a nested dict ("pure dict" of the NNX state):
`{"embed": [V, D], "blocks": {"wq": [L, D, H, hd], ...}, "final_norm": [D], "lm_head": [D, V]}`.
HF stores per-layer Linear weights as (out, in); the table below converts both ways.
"""

import json
import os
import shutil
from typing import Callable, Iterator

import numpy as np

from dgpo_jax.models.config import ModelConfig, from_hf_config, to_hf_config
from dgpo_jax.utils.errors import fail

_LAYER = "model.layers.{i}."


def _layer_table(cfg: ModelConfig):
  """(our block key, HF suffix, HF→ours per-layer fn, ours→HF per-layer fn, HF shape)."""
  D, H, KV, hd, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  rows = [
      ("attn_norm", "input_layernorm.weight", lambda w: w, lambda w: w, (D,)),
      ("mlp_norm", "post_attention_layernorm.weight", lambda w: w, lambda w: w, (D,)),
      ("wq", "self_attn.q_proj.weight", lambda w: w.T.reshape(D, H, hd),
       lambda w: w.reshape(D, H * hd).T, (H * hd, D)),
      ("wk", "self_attn.k_proj.weight", lambda w: w.T.reshape(D, KV, hd),
       lambda w: w.reshape(D, KV * hd).T, (KV * hd, D)),
      ("wv", "self_attn.v_proj.weight", lambda w: w.T.reshape(D, KV, hd),
       lambda w: w.reshape(D, KV * hd).T, (KV * hd, D)),
      ("wo", "self_attn.o_proj.weight", lambda w: w.T.reshape(H, hd, D),
       lambda w: w.reshape(H * hd, D).T, (D, H * hd)),
      ("w_gate", "mlp.gate_proj.weight", lambda w: w.T, lambda w: w.T, (F, D)),
      ("w_up", "mlp.up_proj.weight", lambda w: w.T, lambda w: w.T, (F, D)),
      ("w_down", "mlp.down_proj.weight", lambda w: w.T, lambda w: w.T, (D, F)),
  ]
  if cfg.qkv_bias:
    rows += [
        ("bq", "self_attn.q_proj.bias", lambda w: w.reshape(H, hd), lambda w: w.reshape(-1),
         (H * hd,)),
        ("bk", "self_attn.k_proj.bias", lambda w: w.reshape(KV, hd), lambda w: w.reshape(-1),
         (KV * hd,)),
        ("bv", "self_attn.v_proj.bias", lambda w: w.reshape(KV, hd), lambda w: w.reshape(-1),
         (KV * hd,)),
    ]
  return rows


def read_hf_config(path: str) -> ModelConfig:
  """ModelConfig from `<path>/config.json`."""
  f = os.path.join(path, "config.json")
  if not os.path.isfile(f):
    fail(f"{path}: not a model directory (no config.json)")
  try:
    with open(f) as fh:
      hf = json.load(fh)
  except json.JSONDecodeError as e:
    fail(f"{f}: invalid JSON at line {e.lineno}: {e.msg}")
  return from_hf_config(hf, source=f)


class _TensorSource:
  """Name → array over one or many safetensors files, opened lazily (mmap)."""

  def __init__(self, path: str):
    from safetensors import safe_open  # local: only needed when loading
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
      with open(index) as fh:
        weight_map = json.load(fh).get("weight_map")
      if not isinstance(weight_map, dict):
        fail(f"{index}: no 'weight_map' object")
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
      if not files:
        fail(f"{path}: no *.safetensors files")
      weight_map = None
    self.handles = {}
    self.where = {}
    for name in files:
      full = os.path.join(path, name)
      if not os.path.isfile(full):
        fail(f"{index}: shard {name} listed but missing")
      h = safe_open(full, framework="numpy")
      self.handles[name] = h
      for key in h.keys():
        self.where[key] = name
    if weight_map:
      for key, shard in weight_map.items():
        if key not in self.where:
          fail(f"{os.path.join(path, shard)}: tensor {key} listed in the index is missing")

  def get(self, key: str, shape) -> np.ndarray:
    if key not in self.where:
      fail(f"checkpoint is missing tensor {key} (expected shape {tuple(shape)})")
    arr = self.handles[self.where[key]].get_tensor(key)
    if tuple(arr.shape) != tuple(shape):
      fail(f"{self.where[key]}: tensor {key} has shape {tuple(arr.shape)}, "
           f"expected {tuple(shape)}")
    return arr


def load_hf_params(path: str, cfg: ModelConfig | None = None) -> tuple[ModelConfig, dict]:
  """Loads an HF checkpoint directory into our param layout (numpy, cfg.param_dtype).

  Returns:
    (cfg, params) where params is the pure dict for `nnx.replace_by_pure_dict`.
  """
  cfg = cfg or read_hf_config(path)
  src = _TensorSource(path)
  dt = np.dtype(cfg.jnp_param_dtype)
  cast = lambda a: np.asarray(a, dtype=np.float32).astype(dt) if a.dtype != dt else a
  V, D = cfg.vocab_size, cfg.d_model
  params = {"embed": cast(src.get("model.embed_tokens.weight", (V, D))),
            "final_norm": cast(src.get("model.norm.weight", (D,)))}
  blocks = {}
  for ours, suffix, to_ours, _, shape in _layer_table(cfg):
    blocks[ours] = np.stack([cast(to_ours(src.get(_LAYER.format(i=i) + suffix, shape)))
                             for i in range(cfg.n_layers)])
  params["blocks"] = blocks
  if not cfg.tie_embeddings:
    params["lm_head"] = cast(src.get("lm_head.weight", (V, D)).T)
  return cfg, params


def hf_tensors(cfg: ModelConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, array) for our params."""
  yield "model.embed_tokens.weight", np.asarray(params["embed"])
  yield "model.norm.weight", np.asarray(params["final_norm"])
  for ours, suffix, _, to_hf, _ in _layer_table(cfg):
    stacked = np.asarray(params["blocks"][ours])
    for i in range(cfg.n_layers):
      yield _LAYER.format(i=i) + suffix, np.ascontiguousarray(to_hf(stacked[i]))
  if not cfg.tie_embeddings:
    yield "lm_head.weight", np.ascontiguousarray(np.asarray(params["lm_head"]).T)


def export_hf(out_dir: str, cfg: ModelConfig, params: dict, tokenizer_dir: str | None = None,
              extra_files: dict | None = None, max_shard_bytes: int = 2 << 30):
  """Writes an HF directory transformers can load: config.json, safetensors (+ index),
  generation_config.json and tokenizer files copied from `tokenizer_dir`.

  The directory is written under a temporary name and renamed, so a crash never leaves a
  half-written directory that looks complete.
  """
  from safetensors.numpy import save_file
  tmp = out_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  shards, cur, cur_bytes = [], {}, 0
  for name, arr in hf_tensors(cfg, params):
    if cur and cur_bytes + arr.nbytes > max_shard_bytes:
      shards.append(cur)
      cur, cur_bytes = {}, 0
    cur[name] = arr
    cur_bytes += arr.nbytes
  shards.append(cur)
  if len(shards) == 1:
    save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(tmp, fname), metadata={"format": "pt"})
      for k, a in shard.items():
        weight_map[k] = fname
        total += a.nbytes
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as fh:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=1)
  hf = to_hf_config(cfg)
  hf["torch_dtype"] = str(np.asarray(params["embed"]).dtype)
  with open(os.path.join(tmp, "config.json"), "w") as fh:
    json.dump(hf, fh, indent=2)
  gen = {"bos_token_id": cfg.bos_id, "eos_token_id": list(cfg.eos_ids),
         "pad_token_id": cfg.pad_id}
  with open(os.path.join(tmp, "generation_config.json"), "w") as fh:
    json.dump(gen, fh, indent=2)
  if tokenizer_dir:
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja"):
      src = os.path.join(tokenizer_dir, f)
      if os.path.isfile(src):
        shutil.copy(src, os.path.join(tmp, f))
  for name, content in (extra_files or {}).items():
    if isinstance(content, bytes):
      with open(os.path.join(tmp, name), "wb") as fh:
        fh.write(content)
      continue
    with open(os.path.join(tmp, name), "w") as fh:
      fh.write(content if isinstance(content, str) else json.dumps(content, indent=2))
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)


def map_params(fn: Callable[[np.ndarray], np.ndarray], params: dict) -> dict:
  return {k: map_params(fn, v) if isinstance(v, dict) else fn(v) for k, v in params.items()}
