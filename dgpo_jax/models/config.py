"""Decoder configuration: one dataclass for the Qwen2/Qwen2.5 and Llama-3.x/SmolLM2 families.

Both families share the same block (RMSNorm → GQA attention with RoPE → RMSNorm → SwiGLU);
they differ in q/k/v biases (Qwen2), RoPE base and scaling (Llama 3.1+), and whether the
LM head is tied to the embedding.
"""

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

from dgpo_jax.utils.errors import fail

FAMILIES = ("qwen2", "llama")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a causal decoder.

  Attributes:
    family: "qwen2" (q/k/v biases) or "llama" (no biases; SmolLM2 is a llama).
    vocab_size: rows of the embedding / LM head.
    d_model: hidden size.
    n_layers: number of decoder blocks.
    n_heads: query heads.
    n_kv_heads: key/value heads (GQA); must divide n_heads.
    head_dim: per-head size (d_model // n_heads unless the checkpoint says otherwise).
    d_ff: SwiGLU inner size.
    rope_theta: RoPE base.
    rope_scaling: None, or a dict in HF's format (only rope_type "llama3" is supported).
    rms_eps: RMSNorm epsilon.
    qkv_bias: whether q/k/v projections have biases (Qwen2).
    tie_embeddings: LM head = embedding matrix transposed.
    max_seq_len: longest context the model was trained for (informational; caches are sized
      by the caller).
    param_dtype: storage dtype of the params ("float32" on CPU, "bfloat16" on accelerators).
    dtype: compute dtype of matmuls; norms, softmax and logits stay float32.
    bos_id, eos_ids, pad_id: special token ids (eos_ids is a tuple: chat models have several).
    attn_chunk: query block of causal attention in a plain forward (training, scoring):
      block [s, s+c) attends keys [0, s+c) only, skipping most of the masked triangle;
      0 = one block. Exact either way; one block is slower for CPU training steps
      (figures: docs/benchmarks.md, "Decoder choices").
    attn_impl: "xla", or "cpu_kernel": a plain causal forward's attention (training,
      scoring) in the fused C++ kernel of `models/cpu_attention.py` where it can run (a CPU
      backend with one device), else XLA's as with "xla". The same function to float
      rounding; faster for small heads on CPU (docs/benchmarks.md, "Fused CPU attention").
    scan_unroll: layers per iteration of the scan over blocks in a plain forward
      (training, scoring; `lax.scan(unroll=...)`); n_layers unrolls the stack: faster for
      tiny models on CPU, slower to compile for deep ones. Cached forwards (sampling) keep
      the rolled scan: unrolled, XLA copies the cache around each layer (figures:
      docs/benchmarks.md, "Decoder choices").
  """

  family: str
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  head_dim: int = 0
  rope_theta: float = 10000.0
  rope_scaling: Optional[Any] = None
  rms_eps: float = 1e-6
  qkv_bias: bool = False
  tie_embeddings: bool = True
  max_seq_len: int = 4096
  param_dtype: str = "float32"
  dtype: str = "float32"
  bos_id: Optional[int] = None
  eos_ids: tuple = ()
  pad_id: int = 0
  attn_chunk: int = 128
  scan_unroll: int = 1
  attn_impl: str = "xla"

  def __post_init__(self):
    if self.family not in FAMILIES:
      fail(f"model family {self.family!r} is not supported (expected one of {FAMILIES})")
    if self.head_dim == 0:
      object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
    if self.n_heads % self.n_kv_heads:
      fail(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      fail(f"head_dim={self.head_dim} must be even for RoPE")
    if isinstance(self.rope_scaling, dict):
      # Frozen dataclasses must stay hashable (they are static args of jitted functions).
      object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
    object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
    if self.attn_impl not in ("xla", "cpu_kernel"):
      fail(f"ModelConfig.attn_impl={self.attn_impl!r}: expected 'xla' or 'cpu_kernel'")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        fail(f"ModelConfig.{name}={getattr(self, name)!r}: expected float32, bfloat16 or float16")

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def rope_scaling_dict(self) -> Optional[dict]:
    return dict(self.rope_scaling) if self.rope_scaling else None

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    d, f, h, kv, hd = self.d_model, self.d_ff, self.n_heads, self.n_kv_heads, self.head_dim
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if self.qkv_bias:
      attn += h * hd + 2 * kv * hd
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else self.vocab_size * d
    return self.vocab_size * d + self.n_layers * per_layer + d + head


_LLAMA3_SCALING_8K = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# Published shapes. Special ids are those of the released tokenizers.
_QWEN_SPECIAL = dict(bos_id=None, eos_ids=(151645, 151643), pad_id=151643)
_LLAMA3_SPECIAL = dict(bos_id=128000, eos_ids=(128001, 128008, 128009), pad_id=128004)

PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-0.5b": ModelConfig("qwen2", 151936, 896, 24, 14, 2, 4864, rope_theta=1e6,
                                qkv_bias=True, tie_embeddings=True, max_seq_len=32768,
                                **_QWEN_SPECIAL),
    "qwen2.5-1.5b": ModelConfig("qwen2", 151936, 1536, 28, 12, 2, 8960, rope_theta=1e6,
                                qkv_bias=True, tie_embeddings=True, max_seq_len=32768,
                                **_QWEN_SPECIAL),
    "qwen2.5-3b": ModelConfig("qwen2", 151936, 2048, 36, 16, 2, 11008, rope_theta=1e6,
                              qkv_bias=True, tie_embeddings=True, max_seq_len=32768,
                              **_QWEN_SPECIAL),
    "qwen2.5-7b": ModelConfig("qwen2", 152064, 3584, 28, 28, 4, 18944, rope_theta=1e6,
                              qkv_bias=True, tie_embeddings=False, max_seq_len=32768,
                              **_QWEN_SPECIAL),
    "llama-3.2-1b": ModelConfig("llama", 128256, 2048, 16, 32, 8, 8192, head_dim=64,
                                rope_theta=5e5, rms_eps=1e-5, tie_embeddings=True,
                                rope_scaling=dict(_LLAMA3_SCALING_8K, factor=32.0),
                                max_seq_len=131072, **_LLAMA3_SPECIAL),
    "llama-3.2-3b": ModelConfig("llama", 128256, 3072, 28, 24, 8, 8192, head_dim=128,
                                rope_theta=5e5, rms_eps=1e-5, tie_embeddings=True,
                                rope_scaling=dict(_LLAMA3_SCALING_8K, factor=32.0),
                                max_seq_len=131072, **_LLAMA3_SPECIAL),
    "llama-3.1-8b": ModelConfig("llama", 128256, 4096, 32, 32, 8, 14336, rope_theta=5e5,
                                rms_eps=1e-5, tie_embeddings=False,
                                rope_scaling=_LLAMA3_SCALING_8K, max_seq_len=131072,
                                **_LLAMA3_SPECIAL),
    "smollm2-135m": ModelConfig("llama", 49152, 576, 30, 9, 3, 1536, rope_theta=1e5,
                                rms_eps=1e-5, tie_embeddings=True, max_seq_len=8192,
                                bos_id=1, eos_ids=(2,), pad_id=2),
    # SmolLM2-360M's shapes (HuggingFaceTB/SmolLM2-360M config.json): the 135M's family.
    "smollm2-360m": ModelConfig("llama", 49152, 960, 32, 15, 5, 2560, rope_theta=1e5,
                                rms_eps=1e-5, tie_embeddings=True, max_seq_len=8192,
                                bos_id=1, eos_ids=(2,), pad_id=2),
    # Tiny shapes for tests and the synthetic world (vocab set by the tokenizer).
    "tiny-llama": ModelConfig("llama", 512, 64, 2, 4, 2, 128, rope_theta=1e4, rms_eps=1e-5,
                              tie_embeddings=True, max_seq_len=1024, eos_ids=(1,)),
    "tiny-qwen2": ModelConfig("qwen2", 512, 64, 2, 4, 2, 128, rope_theta=1e6, qkv_bias=True,
                              tie_embeddings=False, max_seq_len=1024, eos_ids=(1,)),
}


def preset(name: str, **overrides) -> ModelConfig:
  """Returns a named shape preset, optionally with fields replaced."""
  if name not in PRESETS:
    fail(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def from_hf_config(hf: dict, source: str = "config.json") -> ModelConfig:
  """Builds a ModelConfig from a transformers `config.json` dict.

  Args:
    hf: the parsed config.json.
    source: the file name, for error messages.

  Raises:
    DgpoError: naming the file and field when the architecture or a field is unsupported.
  """
  mt = hf.get("model_type")
  if mt in ("qwen2",):
    family = "qwen2"
  elif mt in ("llama",):
    family = "llama"
  else:
    archs = hf.get("architectures")
    fail(f"{source}: model_type={mt!r} (architectures={archs}) is not supported; "
         f"expected 'qwen2' (Qwen2/Qwen2.5) or 'llama' (Llama-3.x, SmolLM2)")
  if hf.get("use_sliding_window"):
    fail(f"{source}: use_sliding_window=true is not supported")
  required = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size"]
  for key in required:
    if key not in hf:
      fail(f"{source}: missing field {key!r}")
  if family == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
    fail(f"{source}: llama with attention_bias/mlp_bias is not supported")
  # transformers ≥5 writes `rope_parameters` (theta + type); older files `rope_theta` and
  # `rope_scaling`.
  rope_params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or (rope_params if rope_params.get("rope_type") not in
                                       (None, "default") else None)
  rope_theta = hf.get("rope_theta", rope_params.get("rope_theta", 10000.0))
  if scaling:
    scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ("llama3", "default"):
      fail(f"{source}: rope_scaling type {kind!r} is not supported (only 'llama3')")
    if kind == "default":
      scaling = None
  eos = hf.get("eos_token_id")
  eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
  n_heads = hf["num_attention_heads"]
  return ModelConfig(
      family=family,
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      n_layers=hf["num_hidden_layers"],
      n_heads=n_heads,
      n_kv_heads=hf.get("num_key_value_heads", n_heads),
      d_ff=hf["intermediate_size"],
      head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
      rope_theta=float(rope_theta),
      rope_scaling=scaling,
      rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
      qkv_bias=(family == "qwen2"),
      tie_embeddings=bool(hf.get("tie_word_embeddings", family == "qwen2")),
      max_seq_len=int(hf.get("max_position_embeddings", 4096)),
      bos_id=hf.get("bos_token_id"),
      eos_ids=eos_ids,
      pad_id=int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None
                 else (eos_ids[0] if eos_ids else 0)),
  )


def to_hf_config(cfg: ModelConfig) -> dict:
  """The transformers `config.json` dict for a ModelConfig."""
  arch = {"qwen2": ("qwen2", "Qwen2ForCausalLM"), "llama": ("llama", "LlamaForCausalLM")}
  model_type, cls = arch[cfg.family]
  hf = {
      "architectures": [cls],
      "model_type": model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.rms_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": cfg.rope_scaling_dict,
      "tie_word_embeddings": cfg.tie_embeddings,
      "torch_dtype": cfg.param_dtype,
      "bos_token_id": cfg.bos_id,
      "eos_token_id": list(cfg.eos_ids) if len(cfg.eos_ids) != 1 else cfg.eos_ids[0],
      "pad_token_id": cfg.pad_id,
      "attention_dropout": 0.0,
      "use_cache": True,
  }
  if cfg.family == "llama":
    hf.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
  else:
    hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
  return hf
