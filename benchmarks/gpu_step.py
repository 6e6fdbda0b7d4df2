"""The GPU throughput check of issue 19, in one command: decode against HBM bandwidth and
against Tunix's sampler, the whole DGPO step at a per-GPU slice of the paper batch, and the
projection of a 1,000-step run.

  python -m benchmarks.gpu_step --tunix_site=DIR --out=DIR/gpu_step.json      # on a GPU
  python -m benchmarks.gpu_step --dry --out=/tmp/gpu_step_dry.json            # CPU, tiny shapes

Random weights at the real shapes (qwen2.5-0.5b student and critic, qwen2.5-3b teacher,
bf16 compute); only shapes matter for speed.

1. Decode: our sampler generates `--gen_tokens` greedy tokens after a `--prompt_tokens`
   prompt for each batch in `--batches`; tokens/s, and its share of the bandwidth roofline
   (every step reads the params once and every row's KV cache so far, at the read bandwidth
   measured on the device in the same run).
2. The peer: the same workload through Tunix's `Sampler` on Tunix's own Qwen2 model
   (`google-tunix`, pure Python). `--tunix_site` is a directory made by
   `pip install --target DIR --no-deps google-tunix==0.1.7 jaxtyping wadler_lindig`; Tunix's
   package `__init__` imports its trainers (and pandas, tensorboardX, …), so only its
   `generate` and `models` subpackages are loaded. Without it the peer is reported as absent.
3. The whole step: `benchmarks.rl_step` at `--questions` per GPU (the paper's 512 over 8
   GPUs: 64), its phases against their rooflines.
4. Projection: `--steps` RL steps of that slice on each of `--gpus` GPUs, as a projection
   (data-parallel, the gradient all-reduce and stragglers not counted), next to the
   reference's about one day on 8 H200s.

`--dry`: tiny presets, two small batches, a few tokens, on whatever backend is there; it
checks that every part runs (`tests/test_gpu_step_benchmark.py`), its figures mean nothing.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

from benchmarks.common import emit
from benchmarks.decode import read_bandwidth_gbs, time_prefill_decode

REFERENCE_RUN_H = 24.0  # the paper's DGPO run: about a day on 8 H200s (docs/benchmarks.md)


def _time(fn, reps=3) -> float:
  fn()  # compiles
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def decode_roofline_s(cfg, batch, prompt, gen, param_bytes, bw) -> float:
  """Seconds `gen` decode steps need at `bw` bytes/s: params once per step, plus each row's
  KV cache up to its position (K and V, every layer)."""
  kv_per_token = (2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim
                  * np.dtype(cfg.jnp_dtype).itemsize)
  kv = batch * kv_per_token * sum(prompt + i for i in range(gen))
  return (gen * param_bytes + kv) / bw


def ours(cfg, batches, prompt, gen, bw) -> dict:
  import jax
  from flax import nnx
  from dgpo_jax.models.decoder import Decoder
  from dgpo_jax.models.sampler import Sampler
  from dgpo_jax.utils import shapes
  gd, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  out = {"param_bytes": int(param_bytes)}
  rng = np.random.default_rng(0)
  for b in batches:
    s = Sampler(gd, params, shapes.pow2(prompt + gen + 1), cfg.pad_id)
    prompts = [rng.integers(100, cfg.vocab_size - 100, prompt).tolist() for _ in range(b)]
    pre_s, sec, _ = time_prefill_decode(s, prompts, gen)
    roof = decode_roofline_s(cfg, b, prompt, gen, param_bytes, bw)
    out[f"b{b}"] = {"decode_tokens_per_s": round(b * gen / sec, 1), "seconds": round(sec, 4),
                    "roofline_s": round(roof, 5), "share_of_roofline": round(roof / sec, 4),
                    # what the peer's figure measures: prompt pass and generation together
                    "tokens_per_s_incl_prefill": round(b * gen / (sec + pre_s), 1)}
  return out


class _IdTokenizer:
  """Prompts as space-separated token ids: Tunix's sampler takes strings."""

  def __init__(self, vocab):
    self.vocab = vocab

  def encode(self, text, **_):
    return [int(x) for x in text.split()]

  def decode(self, ids, **_):
    return " ".join(str(int(i)) for i in ids)

  def bos_id(self):
    return 1

  def eos_id(self):
    return self.vocab - 1

  def pad_id(self):
    return 0


def _import_tunix(site: str):
  """Tunix's generate and models subpackages, without its trainer-importing `__init__`."""
  sys.path.insert(0, site)
  pkg = types.ModuleType("tunix")
  pkg.__path__ = [os.path.join(site, "tunix")]
  sys.modules["tunix"] = pkg
  from tunix.generate import sampler
  from tunix.models.qwen2 import model
  return sampler, model


def tunix(site, tunix_cfg, batches, prompt, gen) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  sampler_lib, model_lib = _import_tunix(site)
  mc = getattr(model_lib.ModelConfig, tunix_cfg)() if isinstance(tunix_cfg, str) else tunix_cfg
  mc.dtype = mc.param_dtype = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
  model = model_lib.Qwen2(mc, rngs=nnx.Rngs(0))
  tok = _IdTokenizer(mc.vocab_size)
  # Tunix prepends BOS: a prompt of `prompt` ids takes prompt + 1 slots
  cache = sampler_lib.CacheConfig(cache_size=prompt + 1 + gen + 8, num_layers=mc.num_layers,
                                  num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim)
  s = sampler_lib.Sampler(transformer=model, tokenizer=tok, cache_config=cache)
  rng = np.random.default_rng(0)
  out = {"version": "0.1.7", "config": mc.__class__.__name__}
  for b in batches:
    prompts = [" ".join(str(x) for x in rng.integers(100, mc.vocab_size - 100, prompt))
               for _ in range(b)]
    # Tunix's sampler has no separate decode entry: its time includes the prompt pass, and
    # is compared with ours including ours (`tokens_per_s_incl_prefill`)
    sec = _time(lambda: s(prompts, max_generation_steps=gen, max_prompt_length=prompt + 1,
                          temperature=0.0, eos_tokens=[mc.vocab_size - 1]), reps=2)
    out[f"b{b}"] = {"tokens_per_s_incl_prefill": round(b * gen / sec, 1),
                    "seconds": round(sec, 4)}
  return out


def whole_step(a) -> dict:
  with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "rl_step.json")
    cmd = [sys.executable, "-m", "benchmarks.rl_step", f"--preset={a.student}",
           f"--teacher={a.teacher}", f"--questions={a.questions}", f"--mini_batch={a.mini_batch}",
           f"--turns={a.turns}", f"--prompt_tokens={a.prompt_tokens}",
           f"--turn_tokens={a.turn_tokens}", f"--obs_tokens={a.obs_tokens}",
           f"--micro_batches={a.micro_batches}", f"--dtype={a.dtype}", f"--docs={a.docs}",
           f"--calibrate={a.calibrate}", f"--out={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
      return {"failed": r.stderr[-2000:], "command": " ".join(cmd)}
    return dict(json.load(open(out)), command=" ".join(cmd[1:]))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--student", default="qwen2.5-0.5b")
  ap.add_argument("--teacher", default="qwen2.5-3b")
  ap.add_argument("--tunix_config", default="qwen2p5_0p5b")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--batches", default="64,256,512")
  ap.add_argument("--prompt_tokens", type=int, default=256)
  ap.add_argument("--gen_tokens", type=int, default=128)
  ap.add_argument("--questions", type=int, default=64, help="per GPU: 512 over 8 GPUs")
  ap.add_argument("--turns", type=int, default=4)
  ap.add_argument("--turn_tokens", type=int, default=128)
  ap.add_argument("--obs_tokens", type=int, default=448)
  ap.add_argument("--mini_batch", type=int, default=32)
  ap.add_argument("--micro_batches", type=int, default=4)
  ap.add_argument("--docs", type=int, default=20000)
  ap.add_argument("--calibrate", type=int, default=8192)
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--gpus", type=int, default=8)
  ap.add_argument("--tunix_site", default="")
  ap.add_argument("--dry", action="store_true")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  if a.dry:
    a.student, a.teacher, a.batches = "tiny-qwen2", "tiny-qwen2", "2,4"
    a.prompt_tokens, a.gen_tokens, a.questions, a.mini_batch, a.micro_batches = 16, 8, 2, 2, 1
    a.turns, a.turn_tokens, a.obs_tokens = 2, 8, 16
    a.docs, a.calibrate, a.dtype = 200, 256, "float32"
  import jax
  from dgpo_jax.models import config as model_config
  cfg = model_config.preset(a.student, dtype=a.dtype, param_dtype=a.dtype)
  batches = [int(b) for b in a.batches.split(",")]
  bw = read_bandwidth_gbs(min(1 << 30, a.calibrate ** 2 * 16)) * 1e9
  result = {"benchmark": "gpu_step", "dry": a.dry, "device": str(jax.devices()[0].device_kind),
            "backend": jax.default_backend(), "args": vars(a), "read_bandwidth_bytes_per_s": bw,
            "decode": {"ours": ours(cfg, batches, a.prompt_tokens, a.gen_tokens, bw)}}
  if a.tunix_site:
    tcfg = a.tunix_config
    if a.dry:  # Tunix's Qwen2 at the tiny preset's shape
      _, model_lib = _import_tunix(a.tunix_site)
      tcfg = model_lib.ModelConfig(num_layers=cfg.n_layers, vocab_size=cfg.vocab_size,
                                   embed_dim=cfg.d_model, hidden_dim=cfg.d_ff,
                                   num_heads=cfg.n_heads, head_dim=cfg.head_dim,
                                   num_kv_heads=cfg.n_kv_heads, rope_theta=10000,
                                   norm_eps=1e-6, use_tied_embedding=cfg.tie_embeddings)
    result["decode"]["tunix"] = tunix(a.tunix_site, tcfg, batches, a.prompt_tokens,
                                      a.gen_tokens)
  else:
    result["decode"]["tunix"] = "absent: pass --tunix_site (see the module docstring)"
  step = whole_step(a)
  result["step"] = step
  if "step_s" in step:
    hours = step["step_s"] * a.steps / 3600
    result["projection"] = {
        "kind": "projection, not a measurement",
        "assumes": f"{a.gpus} GPUs each running this {a.questions}-question slice data-parallel; "
                   "gradient all-reduce, stragglers and checkpointing not counted",
        "steps": a.steps, "hours": round(hours, 4), "reference_hours": REFERENCE_RUN_H,
        "reference_over_projection": round(REFERENCE_RUN_H / max(hours, 1e-9), 2)}
  emit(result, a.out)


if __name__ == "__main__":
  main()
