"""Stage "lm": next-token training on a corpus, resumable, then sample generations.

Writes to the workdir: `checkpoints/lm/` (orbax), `metrics.jsonl`, `samples.txt`,
`lm_result.json`.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dgpo_jax.data import lm_data
from dgpo_jax.models.sampler import Sampler, SamplingParams, bucket
from dgpo_jax.parallel import sharding
from dgpo_jax.pipeline import setup
from dgpo_jax.train import lm
from dgpo_jax.utils.checkpoint import Checkpointer, abstract_like
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import MetricsWriter, Progress


def _is_main():
  return jax.process_index() == 0


def _log(msg):
  if _is_main():
    print(msg, flush=True)


def packed_data(config, tok):
  texts = setup.corpus_texts(config)
  docs = [tok.encode(t) for t in texts]
  eos = tok.eos_ids[0] if tok.eos_ids else tok.pad_id
  rows = lm_data.pack(docs, config.data.seq_len, eos)
  _log(f"[lm] {len(texts)} passages → {rows.shape[0]} sequences of {config.data.seq_len} tokens")
  return rows


def sample(built, params, prompts, max_new_tokens, chat=False, seed=0):
  """Greedy continuations of `prompts` (one batched call)."""
  tok = built.tokenizer
  ids = [tok.encode(tok.apply_chat(p) if chat else p) for p in prompts]
  sampler = Sampler(built.graphdef, params, bucket(max(map(len, ids)) + max_new_tokens),
                    pad_id=tok.pad_id)
  res = sampler.generate(ids, max_new_tokens, jax.random.key(seed), SamplingParams(greedy=True),
                         stop_seqs=[[e] for e in built.cfg.eos_ids])
  return [tok.decode(res.tokens[i, :res.num_tokens[i]].tolist(), skip_special=True)
          for i in range(len(prompts))]


def run(config, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  built = setup.build_model(config, workdir)
  mesh, t = built.mesh, config.train
  _log(f"[lm] model {config.model.name}: {built.cfg.num_params() / 1e6:.2f}M params, "
       f"mesh {dict(mesh.shape)}")
  if config.stage == "generate":
    return _write_samples(config, workdir, built, built.params, {})

  rows = packed_data(config, built.tokenizer)
  B = t.batch_size
  n_data = mesh.shape["data"] * mesh.shape["fsdp"]
  if B % n_data:
    fail(f"config.train.batch_size={B} is not divisible by the data×fsdp mesh size {n_data}")
  tx = lm.make_optimizer(t.lr, t.steps, t.warmup_steps, t.weight_decay, t.grad_clip)
  shape = jax.eval_shape(lambda p: lm.init_state(p, tx), built.params)
  state_sh = lm.state_shardings(tx, shape, built.shardings, mesh)
  batch_sh = {"tokens": sharding.batch_sharding(mesh, 2), "mask": sharding.batch_sharding(mesh, 2)}
  update = lm.make_update(built.graphdef, tx, state_sh, batch_sh)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", "lm"), keep=t.keep_ckpts)
  restored = ckpt.restore(abstract_like(shape, state_sh))
  if restored is not None:
    start, state, meta = restored
    _log(f"[lm] resumed from step {start} (data position {meta.get('data_step')})")
  else:
    start = 0
    state = jax.jit(lambda p: lm.init_state(p, tx), out_shardings=state_sh)(built.params)
  built.params = None  # the state owns the params now (donated every step)

  metrics = MetricsWriter(workdir, enabled=_is_main())
  prog = Progress("lm", t.steps, start=start)
  rng = jax.random.key(config.seed)
  last = {}
  t_last, tokens_since = time.time(), 0
  for step in range(start, t.steps):
    idx = lm_data.batch_indices(rows.shape[0], B, step, config.seed)
    batch = {"tokens": rows[idx], "mask": np.ones_like(rows[idx])}
    batch = {k: jax.make_array_from_process_local_data(batch_sh[k], v) for k, v in batch.items()}
    state, m = update(state, batch, jax.random.fold_in(rng, step))
    tokens_since += B * config.data.seq_len
    prog.count = step + 1
    if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
      last = {k: float(v) for k, v in jax.device_get(m).items()}
      now = time.time()
      last["tokens_per_s"] = tokens_since / max(now - t_last, 1e-9)
      t_last, tokens_since = now, 0
      if not np.isfinite(last["loss"]):
        fail(f"step {step + 1}: loss is {last['loss']}; last good checkpoint: "
             f"{ckpt.latest_step()}")
      metrics.write(step + 1, **last)
      prog.update(0, extra=f"loss {last['loss']:.4f} tok/s {last['tokens_per_s']:,.0f}",
                  force=True)
    if (step + 1) % t.ckpt_every == 0 or step + 1 == t.steps:
      ckpt.save(step + 1, state, {"data_step": step + 1, "seed": config.seed,
                                  "model": config.model.name})
  ckpt.close()
  return _write_samples(config, workdir, built, state["params"], last)


def _write_samples(config, workdir, built, params, last_metrics):
  g = config.generate
  outs = sample(built, params, list(g.prompts), g.max_new_tokens, chat=g.chat, seed=config.seed)
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
