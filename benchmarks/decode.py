"""Prefill and decode speed of smollm2-135m on this machine, against the memory-bandwidth limit.

    python -m benchmarks.decode [--torch_python=.venv-ref/bin/python] [--out=FILE.json]

Prints one JSON object. Decode at batch B reads every parameter once per step, so its
floor is param_bytes / copy_bandwidth; `decode_share_of_bw_limit` is that floor divided by
the measured step time. Copy bandwidth is measured in the same run (numpy copy between two
preallocated 512 MiB buffers, read + write bytes); so is read bandwidth (an XLA max-reduce
over 512 MiB), a tighter floor for a pass that only reads weights (`..._of_read_bw_limit`).
The sampler runs as it does by default (`dgpo_jax`: the C++ decode kernels of
`dgpo_jax.models.cpu_decode` when they are available, `kernels` says) and with XLA's dots
(`dgpo_jax_xla`, `Sampler(cpu_kernels=False)`), side by side. When torch + transformers are importable
(here, or in the interpreter given by --torch_python) the same model directory, prompts and
token counts are run through transformers' `generate` in the same run and reported as ratios.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import emit

PROMPT_LEN = 128
NEW_TOKENS = 64
BATCHES = (1, 8)


def copy_bandwidth_gbs(nbytes=512 << 20, reps=5) -> float:
  src = np.ones(nbytes // 4, np.float32)
  dst = np.zeros_like(src)
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - t)
  return 2 * nbytes / best / 1e9


def prompts_for(batch, vocab, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(100, vocab - 100, PROMPT_LEN).tolist() for _ in range(batch)]


def read_bandwidth_gbs(nbytes=512 << 20, reps=5) -> float:
  import jax
  import jax.numpy as jnp
  x = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(jnp.max)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return nbytes / best / 1e9


def time_prefill_decode(sampler, prompts, new_tokens, reps=3) -> tuple:
  """(best prefill s, best decode s, last decode result) of `reps` greedy runs after one
  compiling run; each decode starts from a fresh prefill (decode donates its state)."""
  import jax
  from dgpo_jax.models.sampler import SamplingParams
  greedy = SamplingParams(greedy=True)
  st = sampler.prefill(prompts)  # compile prefill + decode
  sampler.decode(st, new_tokens, jax.random.key(0), greedy)
  t_pre, t_dec = [], []
  for _ in range(reps):
    t = time.perf_counter()
    st = sampler.prefill(prompts)
    jax.block_until_ready(st.last_logits)
    t_pre.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, res = sampler.decode(st, new_tokens, jax.random.key(0), greedy)
    t_dec.append(time.perf_counter() - t)
  return min(t_pre), min(t_dec), res


def ours(model_name, cpu_kernels=None):
  import jax
  from dgpo_jax.models import registry
  from dgpo_jax.models.sampler import Sampler
  from dgpo_jax.utils import shapes
  lm = registry.load(model_name)
  graphdef, params = registry.place_params(lm.cfg, lm.params)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  out = {"path": lm.path, "param_bytes": int(param_bytes), "params": lm.cfg.num_params()}
  for B in BATCHES:
    s = Sampler(graphdef, params, cache_size=shapes.pow2(PROMPT_LEN + NEW_TOKENS),
                pad_id=lm.cfg.pad_id, cpu_kernels=cpu_kernels)
    out["kernels"] = s.cpu_kernels
    pre, dec, res = time_prefill_decode(s, prompts_for(B, lm.cfg.vocab_size), NEW_TOKENS)
    assert (res.num_tokens == NEW_TOKENS).all()
    out[f"b{B}"] = {"prefill_tokens_per_s": B * PROMPT_LEN / pre,
                    "decode_tokens_per_s": B * NEW_TOKENS / dec,
                    "decode_ms_per_step": dec / NEW_TOKENS * 1e3}
  return out


TORCH_SNIPPET = r"""
import json, sys, time, torch, transformers
path, prompts_file, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(%d)
model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
out = {"torch": torch.__version__, "transformers": transformers.__version__}
for B, prompts in json.load(open(prompts_file)).items():
  ids = torch.tensor(prompts)
  with torch.no_grad():
    model(ids)
    model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    t_pre, t_gen = [], []
    for _ in range(3):
      t = time.perf_counter(); model(ids); t_pre.append(time.perf_counter() - t)
      t = time.perf_counter()
      g = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         pad_token_id=0)
      t_gen.append(time.perf_counter() - t)
  pre, gen = min(t_pre), min(t_gen)
  dec = max(gen - pre, 1e-9)  # generate = one prefill + (new - 1) decode steps
  out["b" + B] = {"prefill_tokens_per_s": len(prompts) * ids.shape[1] / pre,
                  "decode_tokens_per_s": len(prompts) * (new - 1) / dec,
                  "decode_ms_per_step": dec / (new - 1) * 1e3}
print("JSON" + json.dumps(out))
"""


def torch_side(python, path, vocab):
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({str(B): prompts_for(B, vocab) for B in BATCHES}, f)
  snippet = TORCH_SNIPPET % (os.cpu_count() or 1)
  r = subprocess.run([python, "-c", snippet, path, f.name, str(NEW_TOKENS)], capture_output=True,
                     text=True, timeout=1800)
  os.unlink(f.name)
  for line in r.stdout.splitlines():
    if line.startswith("JSON"):
      return json.loads(line[4:])
  return {"error": (r.stderr or r.stdout)[-500:]}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="smollm2-135m")
  ap.add_argument("--torch_python", default=None,
                  help="Interpreter with torch + transformers (default: this one, if it has them).")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  import jax
  bw, read_bw = copy_bandwidth_gbs(), read_bandwidth_gbs()
  res = {"benchmark": "decode", "model": a.model, "prompt_len": PROMPT_LEN,
         "new_tokens": NEW_TOKENS,
         "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                     "jax": jax.__version__, "device": str(jax.devices()[0]),
                     "copy_bandwidth_gbs": bw, "read_bandwidth_gbs": read_bw,
                     "reference_copy_bandwidth_gbs": 27.0}}
  o = ours(a.model)
  x = ours(a.model, cpu_kernels=False)
  floor_ms = o["param_bytes"] / (bw * 1e9) * 1e3
  for r in (o, x):
    for B in BATCHES:
      ms = r[f"b{B}"]["decode_ms_per_step"]
      r[f"b{B}"]["decode_share_of_bw_limit"] = floor_ms / ms
      r[f"b{B}"]["decode_share_of_27gbs_limit"] = r["param_bytes"] / 27e9 * 1e3 / ms
      r[f"b{B}"]["decode_share_of_read_bw_limit"] = r["param_bytes"] / (read_bw * 1e9) * 1e3 / ms
  res["dgpo_jax"] = o
  res["dgpo_jax_xla"] = x
  res["ratio_default_over_xla_dots"] = {
      f"b{B}": {k: o[f"b{B}"][k] / x[f"b{B}"][k]
                for k in ("prefill_tokens_per_s", "decode_tokens_per_s")} for B in BATCHES}
  res["bw_limit_ms_per_step"] = floor_ms
  res["target"] = "decode at batch 8 >= 60% of the bandwidth limit"
  res["target_met"] = o["b8"]["decode_share_of_bw_limit"] >= 0.6
  python = a.torch_python
  if python is None:
    try:
      import torch, transformers  # noqa: F401
      python = sys.executable
    except ImportError:
      pass
  if python:
    t = torch_side(python, o["path"], 49152)
    res["transformers_torch"] = t
    if "error" not in t:
      res["ratio_ours_over_torch"] = {
          f"b{B}": {k: o[f"b{B}"][k] / t[f"b{B}"][k]
                    for k in ("prefill_tokens_per_s", "decode_tokens_per_s")} for B in BATCHES}
  else:
    res["transformers_torch"] = "skipped: torch/transformers not importable (see --torch_python)"
  emit(res, a.out)


if __name__ == "__main__":
  main()
