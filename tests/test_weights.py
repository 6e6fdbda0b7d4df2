"""Weights in and out: HF export/import identity, GGUF dequantization, bad checkpoints."""

import json
import os
import shutil

import numpy as np
import pytest

from dgpo_jax.models import gguf_io, hf_io, registry
from dgpo_jax.models.tokenizer import HFTokenizer, load_tokenizer
from dgpo_jax.utils.errors import DgpoError
from conftest import GOLDEN


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], dict):
      _assert_same(a[k], b[k])
    else:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


@pytest.mark.parametrize("name", ["qwen2", "llama"])
@pytest.mark.parametrize("shard_bytes", [1 << 30, 20_000])
def test_export_then_load_is_identity(tmp_path, name, shard_bytes):
  cfg, params = hf_io.load_hf_params(os.path.join(GOLDEN, name))
  out = tmp_path / "export"
  hf_io.export_hf(str(out), cfg, params, max_shard_bytes=shard_bytes)
  if shard_bytes < 1 << 30:
    assert (out / "model.safetensors.index.json").is_file()
  cfg2, params2 = hf_io.load_hf_params(str(out))
  assert cfg2 == cfg
  _assert_same(params, params2)
  assert not os.path.exists(str(out) + ".tmp")


def _copy_golden(tmp_path, name="llama"):
  d = tmp_path / name
  shutil.copytree(os.path.join(GOLDEN, name), d)
  return d


def test_missing_tensor_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  d = _copy_golden(tmp_path)
  t = load_file(str(d / "model.safetensors"))
  del t["model.layers.1.mlp.up_proj.weight"]
  save_file(t, str(d / "model.safetensors"))
  with pytest.raises(DgpoError, match=r"missing tensor model.layers.1.mlp.up_proj.weight "
                                      r"\(expected shape \(96, 48\)\)"):
    hf_io.load_hf_params(str(d))


def test_misshaped_tensor_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  d = _copy_golden(tmp_path)
  t = load_file(str(d / "model.safetensors"))
  t["model.norm.weight"] = np.ones((47,), np.float32)
  save_file(t, str(d / "model.safetensors"))
  with pytest.raises(DgpoError, match=r"model.safetensors: tensor model.norm.weight has shape "
                                      r"\(47,\), expected \(48,\)"):
    hf_io.load_hf_params(str(d))


def test_unknown_model_and_bad_paths(tmp_path):
  with pytest.raises(DgpoError, match="unknown model 'gpt-17'"):
    registry.resolve("gpt-17")
  with pytest.raises(DgpoError, match="no config.json"):
    registry.resolve(str(tmp_path))
  with pytest.raises(DgpoError, match="GGUF file not found"):
    registry.resolve(str(tmp_path / "x.gguf"))


def test_tokenizer_vocab_mismatch_is_reported(tmp_path):
  from tokenizers import Tokenizer, models
  vocab = {f"t{i}": i for i in range(300)}
  Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(tmp_path / "tokenizer.json"))
  tok = HFTokenizer(str(tmp_path / "tokenizer.json"))
  with pytest.raises(DgpoError, match=r"has 300 tokens but .* has vocab_size=256"):
    tok.check_vocab(256, where="model")
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(DgpoError, match="not a valid tokenizer.json"):
    HFTokenizer(str(tmp_path / "bad.json"))


def _permute(w, n_head):  # llama.cpp's convert_hf_to_gguf permutation, for the writer below
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _write_gguf(path, golden):
  import gguf
  hf = json.load(open(os.path.join(golden, "config.json")))
  arch = hf["model_type"]
  from safetensors.numpy import load_file
  t = load_file(os.path.join(golden, "model.safetensors"))
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(hf["num_hidden_layers"])
  w.add_context_length(hf["max_position_embeddings"])
  w.add_embedding_length(hf["hidden_size"])
  w.add_feed_forward_length(hf["intermediate_size"])
  w.add_head_count(hf["num_attention_heads"])
  w.add_head_count_kv(hf["num_key_value_heads"])
  w.add_key_length(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
  w.add_rope_freq_base(hf.get("rope_theta", hf.get("rope_parameters", {}).get("rope_theta")))
  w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
  w.add_tokenizer_model("gpt2")
  w.add_token_list([f"<{i}>" for i in range(hf["vocab_size"])])
  w.add_token_types([1] * hf["vocab_size"])
  w.add_token_merges([])
  w.add_eos_token_id(1)
  names = {"input_layernorm.weight": "attn_norm.weight",
           "post_attention_layernorm.weight": "ffn_norm.weight",
           "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
           "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight":
           "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
           "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
           "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
           "self_attn.v_proj.bias": "attn_v.bias"}
  for k, arr in t.items():
    if k == "model.embed_tokens.weight":
      name = "token_embd.weight"
    elif k == "model.norm.weight":
      name = "output_norm.weight"
    elif k == "lm_head.weight":
      name = "output.weight"
    else:
      i, rest = k[len("model.layers."):].split(".", 1)
      name = f"blk.{i}.{names[rest]}"
      if arch == "llama" and rest == "self_attn.q_proj.weight":
        arr = _permute(arr, hf["num_attention_heads"])
      if arch == "llama" and rest == "self_attn.k_proj.weight":
        arr = _permute(arr, hf["num_key_value_heads"])
    w.add_tensor(name, np.ascontiguousarray(arr))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_gguf_params_equal_hf_params(tmp_path, name):
  golden = os.path.join(GOLDEN, name)
  _write_gguf(tmp_path / "m.gguf", golden)
  cfg_g, params_g, _ = gguf_io.load_gguf_params(str(tmp_path / "m.gguf"))
  cfg_h, params_h = hf_io.load_hf_params(golden)
  assert cfg_g.tie_embeddings == cfg_h.tie_embeddings and cfg_g.qkv_bias == cfg_h.qkv_bias
  _assert_same(params_h, params_g)  # q/k un-permuted back to HF's layout


def test_gguf_to_cached_hf_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("DGPO_JAX_CACHE", str(tmp_path / "cache"))
  _write_gguf(tmp_path / "m.gguf", os.path.join(GOLDEN, "qwen2"))
  lm = registry.load(str(tmp_path / "m.gguf"))
  assert lm.path.startswith(str(tmp_path / "cache"))
  assert lm.tokenizer.vocab_size == 256
  assert registry.resolve(str(tmp_path / "m.gguf")) == lm.path  # cached, not reconverted
  with pytest.raises(DgpoError, match="not a readable GGUF"):
    (tmp_path / "bad.gguf").write_bytes(b"GGUFxxxx")
    gguf_io.load_gguf_params(str(tmp_path / "bad.gguf"))
