"""Stage "lm": next-token training on a corpus, resumable, then sample generations.

Writes to the workdir: `checkpoints/lm/` (orbax), `metrics_lm.jsonl`, `samples.txt`,
`lm_result.json`.
"""

import json
import os

import jax
import numpy as np

from dgpo_jax.data import lm_data
from dgpo_jax.models.sampler import Sampler, SamplingParams
from dgpo_jax.utils import shapes
from dgpo_jax.pipeline import setup
from dgpo_jax.train.loop import FitConfig, fit
from dgpo_jax.train.step import Model
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import log


def _is_main():
  return jax.process_index() == 0


def packed_data(config, tok):
  texts = setup.corpus_texts(config)
  docs = [tok.encode(t) for t in texts]
  eos = tok.eos_ids[0] if tok.eos_ids else tok.pad_id
  rows = lm_data.pack(docs, config.data.seq_len, eos)
  log(f"[lm] {len(texts)} passages → {rows.shape[0]} sequences of {config.data.seq_len} tokens")
  return rows


def sample(model: Model, params, prompts, max_new_tokens, chat=False, seed=0):
  """Greedy continuations of `prompts` (one batched call)."""
  tok = model.tokenizer
  ids = [tok.encode(tok.apply_chat(p) if chat else p) for p in prompts]
  sampler = Sampler(model.graphdef, params, shapes.pow2(max(map(len, ids)) + max_new_tokens),
                    pad_id=tok.pad_id)
  res = sampler.generate(ids, max_new_tokens, jax.random.key(seed), SamplingParams(greedy=True),
                         stop_seqs=[[e] for e in model.cfg.eos_ids])
  return [tok.decode(res.tokens[i, :res.num_tokens[i]].tolist(), skip_special=True)
          for i in range(len(prompts))]


def run(config, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  model, mesh = setup.build_model(config, workdir)
  t = config.train
  log(f"[lm] model {config.model.name}: {model.cfg.num_params() / 1e6:.2f}M params, "
       f"mesh {dict(mesh.shape)}")
  if config.stage == "generate":
    return _write_samples(config, workdir, model, model.params, {})
  rows = packed_data(config, model.tokenizer)
  B = t.batch_size
  n_data = mesh.shape["data"] * mesh.shape["fsdp"]
  if B % n_data:
    fail(f"config.train.batch_size={B} is not divisible by the data×fsdp mesh size {n_data}")

  def batch_fn(step):
    idx = lm_data.batch_indices(rows.shape[0], B, step, config.seed)
    return {"tokens": rows[idx], "mask": np.ones_like(rows[idx])}

  params, last = fit("lm", workdir, model, mesh, batch_fn, FitConfig.from_config(t),
                     config.seed, log)
  return _write_samples(config, workdir, model, params, last)


def _write_samples(config, workdir, model: Model, params, last_metrics):
  g = config.generate
  if jax.process_count() > 1:  # sample on each host's own devices from a gathered copy
    from dgpo_jax.parallel import distributed
    params = distributed.host_local(params)
  outs = sample(model, params, list(g.prompts), g.max_new_tokens, chat=g.chat, seed=config.seed)
  result = {"final_metrics": last_metrics,
            "samples": [{"prompt": p, "continuation": o} for p, o in zip(g.prompts, outs)]}
  if _is_main():
    with open(os.path.join(workdir, "samples.txt"), "w") as f:
      for p, o in zip(g.prompts, outs):
        f.write(f"{p}{o}\n---\n")
    with open(os.path.join(workdir, "lm_result.json"), "w") as f:
      json.dump(result, f, indent=2)
    for p, o in zip(g.prompts, outs):
      print(f"[sample] {p!r} → {o!r}", flush=True)
  return result
