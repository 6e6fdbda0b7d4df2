import json
import os

import pytest

from dgpo_jax.models import config as C
from dgpo_jax.models import hf_io
from dgpo_jax.utils.errors import DgpoError
from conftest import GOLDEN


@pytest.mark.parametrize("name,millions", [
    ("qwen2.5-0.5b", 494.0), ("qwen2.5-1.5b", 1543.7), ("qwen2.5-3b", 3085.9),
    ("qwen2.5-7b", 7615.6), ("llama-3.2-1b", 1235.8), ("llama-3.1-8b", 8030.3),
    ("smollm2-135m", 134.5), ("smollm2-360m", 361.8)])
def test_preset_param_counts_match_published(name, millions):
  assert C.preset(name).num_params() / 1e6 == pytest.approx(millions, abs=0.1)


def test_hf_config_roundtrip():
  for name in ("qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-7b"):
    cfg = C.preset(name)
    assert C.from_hf_config(C.to_hf_config(cfg)) == cfg


def test_reads_transformers5_rope_parameters():
  cfg = hf_io.read_hf_config(os.path.join(GOLDEN, "llama"))
  assert cfg.rope_theta == 5e5
  assert cfg.rope_scaling_dict["rope_type"] == "llama3"


def test_unsupported_architecture_names_file_and_field(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox",
                                                    "architectures": ["GPTNeoXForCausalLM"]}))
  with pytest.raises(DgpoError, match=r"config.json: model_type='gpt_neox'"):
    hf_io.read_hf_config(str(tmp_path))


def test_missing_field_and_bad_values():
  with pytest.raises(DgpoError, match="missing field 'hidden_size'"):
    C.from_hf_config({"model_type": "llama", "vocab_size": 10})
  with pytest.raises(DgpoError, match="not a multiple"):
    C.ModelConfig("llama", 10, 16, 1, 3, 2, 32)
  with pytest.raises(DgpoError, match="unknown model preset"):
    C.preset("gpt-9")
  with pytest.raises(DgpoError, match="rope_scaling type 'yarn'"):
    C.from_hf_config({"model_type": "qwen2", "vocab_size": 8, "hidden_size": 8,
                      "num_hidden_layers": 1, "num_attention_heads": 2,
                      "intermediate_size": 8, "rope_scaling": {"type": "yarn"}})


def test_chat_templates_render_the_instruct_formats():
  from dgpo_jax.models.tokenizer import render_chat
  assert render_chat("qwen2.5", "hi") == (
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
      "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
  assert render_chat("smollm2", "hi").startswith(
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>")
  assert render_chat("plain", "hi") == "hi"
  with pytest.raises(DgpoError, match="unknown chat format"):
    render_chat("vicuna", "hi")
