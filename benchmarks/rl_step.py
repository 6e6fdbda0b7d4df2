"""One whole DGPO step at real shapes, phase by phase, each against the machine's roofline.

    python -m benchmarks.rl_step --preset=smollm2-135m --teacher=smollm2-360m --questions=8 \
        [--group=1] [--turns=3] [--prompt_tokens=256] [--turn_tokens=64] [--obs_tokens=448] \
        [--mini_batch=8] [--micro_batches=4] [--epochs=1] [--docs=20000] [--out=benchmarks/results/rl_step_cpu.json]

Random weights at the presets' shapes (only shapes matter for speed) and a scripted policy of
controlled length: every row decodes `turn_tokens` per turn (no stop sequences), its "query"
is made from the tokens it decoded and sent to a BM25 index of `docs` synthetic passages on
the host, and an observation of `obs_tokens` is appended to the live KV cache, for `turns`
turns (the last without an observation). Then the experience pass (actor, critic, teacher
forwards, KL, GAE) over the whole batch, and the PPO updates (`epochs` passes in mini-batches
of `mini_batch` rows, actor and critic, with their optimizers). One untimed step compiles
every program first; the timed step follows.

Per phase: seconds, share of the step, tokens/s, and the roofline time on this machine from
figures measured in the same run (f32 matmul FLOP/s on 4096² matmuls; memory bandwidth from
1 GiB copies between warm buffers). Decode is bounded by memory: each decode step reads the student's
params and every row's KV cache so far; prefill, observation appends, the experience pass and
the updates by matmul FLOPs (2·N per token forward, 6·N forward + backward, with N the
parameter count, plus causal attention). Retrieval is host work with no roofline here.
"""

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import emit
from benchmarks.decode import copy_bandwidth_gbs, read_bandwidth_gbs
from benchmarks.ppo_update import matmul_peak
from dgpo_jax.models import config as model_config
from dgpo_jax.models.decoder import Decoder, ValueModel
from dgpo_jax.models.sampler import Sampler, SamplingParams
from dgpo_jax.utils import shapes
from dgpo_jax.rl import ppo
from dgpo_jax.train import lm

WORDS = ("river capital founder museum novel opera city harbour college emperor bridge "
         "mountain election treaty painter symphony island railway castle desert").split()


def _timed(fn):
  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t, out


def _model(cfg, seed, ctor=Decoder):
  # remat as the trainer's models: the update keeps one layer's activations, not thirty
  gd, state = nnx.split(ctor(cfg, rngs=nnx.Rngs(seed), remat=True))
  return gd, nnx.to_pure_dict(state)


def _index(docs: int, workdir: str):
  from dgpo_jax.retrieval import index as index_lib
  from dgpo_jax.retrieval.retriever import IndexRetriever
  rng = np.random.default_rng(0)
  corpus = os.path.join(workdir, "corpus.jsonl")
  with open(corpus, "w") as f:
    for i in range(docs):
      words = " ".join(rng.choice(WORDS, 60))
      f.write(json.dumps({"id": str(i), "contents": f"Passage {i}\n{words}"}) + "\n")
  index_lib.build(corpus, os.path.join(workdir, "bm25"), "bm25")
  return IndexRetriever(os.path.join(workdir, "bm25"))


def attention_flops(cfg, positions: np.ndarray) -> float:
  """Forward FLOPs of causal attention scores and values for tokens at `positions`."""
  return float(4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * positions.sum())


def rollout(a, sampler, retriever, rows, cfg, rng):
  """The scripted multi-turn rollout; returns (phase seconds, tokens per phase, KV bytes read
  by decode, number of decode steps, the batch's token ids)."""
  t = {"prefill": 0.0, "decode": 0.0, "retrieval": 0.0, "append": 0.0}
  prompts = [rng.integers(100, cfg.vocab_size - 100, a.prompt_tokens).tolist()
             for _ in range(rows)]
  ids = [list(p) for p in prompts]
  dt, st = _timed(lambda: sampler.prefill(prompts))
  t["prefill"] += dt
  kv_per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize
  kv_bytes, decoded, queries = 0.0, 0, 0
  for turn in range(a.turns):
    ctx = len(ids[0])
    t0 = time.perf_counter()
    st, res = sampler.decode(st, a.turn_tokens, jax.random.key(turn), SamplingParams())
    jax.block_until_ready(st.lengths)
    t["decode"] += time.perf_counter() - t0
    n = res.num_tokens
    decoded += int(n.sum())
    # every decode step reads each row's cache up to its current length
    kv_bytes += float(kv_per_token * rows * sum(ctx + k for k in range(a.turn_tokens)))
    for i in range(rows):
      ids[i] += res.tokens[i, :n[i]].tolist()
    if turn == a.turns - 1:
      break
    qs = [" ".join(WORDS[int(x) % len(WORDS)] for x in res.tokens[i, :4]) for i in range(rows)]
    t0 = time.perf_counter()
    retriever.retrieve(qs, 3)
    t["retrieval"] += time.perf_counter() - t0
    queries += rows
    obs = [rng.integers(100, cfg.vocab_size - 100, a.obs_tokens).tolist() for _ in range(rows)]
    dt, st = _timed(lambda: sampler.append(st, obs))
    t["append"] += dt
    for i in range(rows):
      ids[i] += obs[i]
  return t, decoded, kv_bytes, queries, ids


def batch_of(ids, a, rows):
  """The experience pass's inputs: token ids, mask, generated-token mask, last generated
  token, a 0/1 score per row."""
  width = shapes.pow2_or_1p5(max(len(x) for x in ids) + 1, minimum=64)
  tokens = np.zeros((rows, width), np.int32)
  mask, gen, last = (np.zeros((rows, width), np.int32) for _ in range(3))
  for i, x in enumerate(ids):
    tokens[i, :len(x)], mask[i, :len(x)] = x, 1
    pos = a.prompt_tokens
    for turn in range(a.turns):
      gen[i, pos:pos + a.turn_tokens] = 1
      pos += a.turn_tokens + (a.obs_tokens if turn < a.turns - 1 else 0)
    last[i, len(x) - 1] = 1
  rng = np.random.default_rng(1)
  return {"tokens": tokens, "mask": mask, "gen": gen, "last": last,
          "score": rng.integers(0, 2, rows).astype(np.float32),
          "group": np.repeat(np.arange(rows // a.group), a.group).astype(np.int32)}


def step(a, cfg, teacher_p, sampler, retriever, rows, state, fns, rng):
  """One DGPO step; returns (phase seconds, counts, new state)."""
  experience, update = fns
  sampler.params = state["actor"]["params"]
  t, decoded, kv_bytes, queries, ids = rollout(a, sampler, retriever, rows, cfg, rng)
  host = batch_of(ids, a, rows)
  dev = {k: jnp.asarray(v) for k, v in host.items()}
  t["experience"], (exp, _) = _timed(
      lambda: experience(state["actor"]["params"], state.get("critic", {}).get("params"),
                         teacher_p, dev))
  full = {"tokens": dev["tokens"], "mask": dev["mask"], **exp}
  t0 = time.perf_counter()
  perm_rng = np.random.default_rng(0)
  for _ in range(a.epochs):
    perm = perm_rng.permutation(rows)
    for s in range(0, rows, a.mini_batch):
      sel = perm[s:s + a.mini_batch]
      state, m = update(state, jax.tree.map(lambda x: x[sel], full), jax.random.key(0))
  jax.block_until_ready(m)
  t["update"] = time.perf_counter() - t0
  counts = {"decoded": decoded, "kv_bytes": kv_bytes, "queries": queries,
            "width": host["tokens"].shape[1], "tokens": int(host["mask"].sum()),
            "positions": np.concatenate([np.arange(int(r.sum())) for r in host["mask"]])}
  return t, counts, state


def roofline(a, cfgs, counts, rows, peak, bw, critic: bool) -> dict:
  """Lower bounds (seconds) per phase on this machine. The critic's trunk is counted as a
  whole student (its scalar head is cheaper than the LM head: a slight overestimate)."""
  trained = 2 if critic else 1
  s_cfg, t_cfg = cfgs
  ns, nt = s_cfg.num_params(), t_cfg.num_params()
  pbytes = ns * np.dtype(s_cfg.param_dtype).itemsize
  steps = a.turns * a.turn_tokens  # decode steps (every row decodes in each)
  pos = counts["positions"]
  prefill_pos = np.tile(np.arange(a.prompt_tokens), rows)
  append_tokens = rows * (a.turns - 1) * a.obs_tokens
  fwd = lambda n, tokens, p: 2 * n * tokens + attention_flops(s_cfg, p)
  out = {
      "prefill": fwd(ns, rows * a.prompt_tokens, prefill_pos) / peak,
      "decode": max((steps * pbytes + counts["kv_bytes"]) / bw,
                    2 * ns * counts["decoded"] / peak),
      "append": 2 * ns * append_tokens / peak,
      "experience": (fwd(ns, counts["tokens"], pos) * trained
                     + 2 * nt * counts["tokens"] + attention_flops(t_cfg, pos)) / peak,
      "update": a.epochs * 3 * trained * fwd(ns, counts["tokens"], pos) / peak,
  }
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="smollm2-135m")
  ap.add_argument("--teacher", default="smollm2-360m")
  ap.add_argument("--questions", type=int, default=8)
  ap.add_argument("--group", type=int, default=1)
  ap.add_argument("--turns", type=int, default=3)
  ap.add_argument("--prompt_tokens", type=int, default=256)
  ap.add_argument("--turn_tokens", type=int, default=64)
  ap.add_argument("--obs_tokens", type=int, default=448)
  ap.add_argument("--mini_batch", type=int, default=8)
  ap.add_argument("--micro_batches", type=int, default=4)
  ap.add_argument("--epochs", type=int, default=1)
  ap.add_argument("--docs", type=int, default=20000)
  ap.add_argument("--calibrate", type=int, default=4096,
                  help="matmul size n (n×n) for the FLOP/s peak; memory copies of n²·64 bytes")
  ap.add_argument("--dtype", default="float32",
                  help="compute dtype of all three models; the teacher's params too (bfloat16 "
                       "on GPUs: the trained student and critic keep float32 params)")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  rows = a.questions * a.group
  if rows % a.mini_batch or a.mini_batch % a.micro_batches:
    raise SystemExit(f"error: --questions × --group ({rows}) must divide into --mini_batch "
                     f"({a.mini_batch}) and that into --micro_batches ({a.micro_batches})")
  s_cfg = model_config.preset(a.preset, dtype=a.dtype)
  t_cfg = model_config.preset(a.teacher, dtype=a.dtype, param_dtype=a.dtype)
  if t_cfg.vocab_size != s_cfg.vocab_size:
    raise SystemExit(f"error: {a.preset} and {a.teacher} have different vocabularies")
  models = (_model(s_cfg, 0), _model(s_cfg, 1, ValueModel), _model(t_cfg, 2))
  (s_gd, s_p), (c_gd, c_p), (t_gd, t_p) = models
  pc = ppo.PPOConfig(advantage="grpo" if a.group > 1 else "gae", micro_batches=a.micro_batches)
  if not pc.use_critic:  # GRPO (group > 1): no critic, as in training
    c_gd, c_p = None, None
  tx = lm.make_optimizer(1e-6, 100)
  state = ppo.init_state(s_p, c_p, tx, tx)
  fns = (ppo.make_experience(s_gd, c_gd, t_gd, pc, num_groups=a.questions),
         ppo.make_update(s_gd, c_gd, tx, tx, pc))
  total = a.prompt_tokens + a.turns * a.turn_tokens + (a.turns - 1) * a.obs_tokens
  sampler = Sampler(s_gd, s_p, shapes.pow2(total + 1), s_cfg.pad_id)
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    retriever = _index(a.docs, d)
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, _, state = step(a, s_cfg, t_p, sampler, retriever, rows, state, fns,
                       np.random.default_rng(0))
    compile_s = time.perf_counter() - t0
    t, counts, state = step(a, s_cfg, t_p, sampler, retriever, rows, state, fns,
                            np.random.default_rng(0))
  # host memory on CPU; the device's own read bandwidth (HBM) on an accelerator
  bw = (copy_bandwidth_gbs(a.calibrate ** 2 * 64) if jax.default_backend() == "cpu" else
        read_bandwidth_gbs(min(1 << 31, a.calibrate ** 2 * 64)))
  peak, bw = matmul_peak(a.calibrate, dtype=a.dtype), bw * 1e9
  roof = roofline(a, (s_cfg, t_cfg), counts, rows, peak, bw, pc.use_critic)
  total_s = sum(t.values())
  tokens = {"prefill": rows * a.prompt_tokens, "decode": counts["decoded"],
            "append": rows * (a.turns - 1) * a.obs_tokens, "experience": counts["tokens"],
            "update": counts["tokens"] * a.epochs, "retrieval": counts["queries"]}
  phases = {}
  for k, s in t.items():
    phases[k] = {"seconds": round(s, 4), "share_of_step": round(s / total_s, 4),
                 ("queries_per_s" if k == "retrieval" else "tokens_per_s"):
                     round(tokens[k] / max(s, 1e-9), 1)}
    if k in roof:
      phases[k]["roofline_s"] = round(roof[k], 4)
      phases[k]["share_of_roofline"] = round(roof[k] / max(s, 1e-9), 4)
  result = {"benchmark": "rl_step", "device": str(jax.devices()[0].device_kind),
            "backend": jax.default_backend(), "args": vars(a), "rows": rows,
            "advantage": pc.advantage,
            "params": {"student": s_cfg.num_params(),
                       "critic": s_cfg.num_params() if pc.use_critic else 0,
                       "teacher": t_cfg.num_params()},
            "batch_width": counts["width"], "step_s": round(total_s, 3),
            "compile_and_first_step_s": round(compile_s, 1), "index_build_s": round(index_s, 1),
            "matmul_peak_flops_per_s": peak, "memory_bandwidth_bytes_per_s": bw,
            "largest_phase": max(t, key=t.get), "phases": phases}
  emit(result, a.out)


if __name__ == "__main__":
  main()
