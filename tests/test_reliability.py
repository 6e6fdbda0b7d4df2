"""Reliability: SIGKILL, SIGTERM (preemption) and resume, corrupted checkpoints, determinism
of results.json, numerical guards, and the retrieval server under load."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT, cpu_env, WIKI, copy_prepared, needs_shared
from dgpo_jax.utils.checkpoint import Checkpointer
from dgpo_jax.utils.errors import DgpoError

KD = "kd-ce_fkl-lam1-all-16q-t0"


def _start(workdir):
  env = cpu_env(2)
  return subprocess.Popen([sys.executable, "-m", "dgpo_jax.main",
                           "--config=configs/synthetic.py:smoke", f"--workdir={workdir}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env=env)


def _steps(d):
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _kill_when(workdir, ready, rng, timeout=300):
  """Starts `main`, SIGKILLs it once `ready()` holds plus a random delay (so the kill lands
  anywhere: mid-step, mid-save, mid-rollout, mid-evaluation). True if it was killed."""
  p = _start(workdir)
  t0 = time.time()
  while p.poll() is None and time.time() - t0 < timeout:
    if ready():
      time.sleep(rng.uniform(0.0, 0.5))
      p.send_signal(signal.SIGKILL)
      p.wait()
      return True
    time.sleep(0.02)
  out, err = p.communicate()
  assert p.returncode == 0, err[-3000:]
  return False


def _term_when(workdir, ready, twice=False, timeout=300):
  """Starts `main` and sends SIGTERM (the preemption notice) once `ready()` holds, twice if
  asked; `main` must then checkpoint and exit 75. Returns its stderr."""
  p = _start(workdir)
  t0 = time.time()
  while p.poll() is None and not ready() and time.time() - t0 < timeout:
    time.sleep(0.02)
  p.send_signal(signal.SIGTERM)
  if twice:
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=timeout)
  assert p.returncode == 75, err[-3000:]
  assert "[preemption] preempted:" in err and "Traceback" not in err, err[-3000:]
  return err


def _stopped_at(err):
  line = [l for l in err.splitlines() if "[preemption] preempted:" in l][-1]
  return int(line.split("checkpointed at step ")[1].split(";")[0])


def _all_complete_checkpoints_readable(workdir):
  root = os.path.join(workdir, "checkpoints")
  for stage in os.listdir(root):
    ck = Checkpointer(os.path.join(root, stage))
    for s in ck.all_steps():  # what orbax reports as complete must restore
      assert ck.restore(None, step=s) is not None, (stage, s)
    ck.close()


@pytest.mark.slow
@pytest.mark.smoke_any_worker
@needs_shared
def test_sigkill_and_sigterm_during_kd_and_ppo_then_identical_results(smoke_run, tmp_path):
  """SIGTERM in KD, SIGKILL at a random point of KD, two SIGTERMs in PPO, then a corrupted
  newest checkpoint: each SIGTERM ends in a checkpoint at a step boundary and exit 75, and
  rerunning the same command finishes with a results.json identical to the uninterrupted
  run's (same seed, CPU)."""
  rng = random.Random(int(os.environ.get("DGPO_TEST_SEED", "0")) or None)
  wd = tmp_path / "crash"
  copy_prepared(smoke_run, wd)  # same world/models/TGO as the uninterrupted run
  kd, rl = wd / "checkpoints" / KD, wd / "checkpoints" / "rl-dgpo"
  newest = lambda d: (_steps(d) or [0])[-1]
  # KD checkpoints once per epoch (4 steps), and where a SIGTERM stops it; RL every step.
  err = _term_when(wd, lambda: kd.is_dir())  # the notice arrives as KD starts
  assert f"[preemption] preempted: {KD} checkpointed at step" in err
  assert _stopped_at(err) in _steps(kd)
  _all_complete_checkpoints_readable(wd)
  kills = _kill_when(wd, lambda: newest(kd) >= 4, rng)  # epoch 2 or its validation
  _all_complete_checkpoints_readable(wd)
  err = _term_when(wd, lambda: rl.is_dir(), twice=True)  # PPO, a second notice mid-stop
  assert "[preemption] preempted: rl-dgpo checkpointed at step" in err
  assert _stopped_at(err) == newest(rl) >= 1
  _all_complete_checkpoints_readable(wd)
  # Corrupt the newest KD checkpoint: the rerun must warn, use the one before it, redo the
  # epoch and reach the same numbers.
  assert _steps(kd) == [4, 8]
  for root, _, files in os.walk(kd / "8" / "state"):
    for f in files:
      open(os.path.join(root, f), "wb").close()
  p = _start(wd)
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  assert "newest checkpoint(s) unreadable, restored step 4" in err
  assert kills >= 1
  a = json.load(open(smoke_run / "results.json"))
  b = json.load(open(wd / "results.json"))
  assert b == a  # CPU determinism through kills, a corrupted checkpoint and resumes
  last = lambda w: [json.loads(l) for l in open(w / "metrics_rl-dgpo.jsonl")][-1]
  ra, rb = last(smoke_run), last(wd)
  for k in ("em", "kl", "pg_loss", "vf_loss", "entropy", "response_length"):
    assert ra[k] == rb[k], k
  assert not any(".tmp" in f for f in os.listdir(wd / "eval"))


def test_repeated_non_finite_steps_stop_with_last_good_checkpoint(tmp_path):
  from dgpo_jax.models import config as C
  from dgpo_jax.models.decoder import Decoder
  from dgpo_jax.parallel import sharding
  from dgpo_jax.train import lm
  from dgpo_jax.train.loop import FitConfig, fit
  from dgpo_jax.train.step import Model
  cfg = C.preset("tiny-llama", vocab_size=64)
  mesh = sharding.make_mesh("data:1", devices=jax.devices()[:1])
  gd, params, sh = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh, ())

  def loss_fn(graphdef, p, batch, frozen=None):  # poisoned from step 2 on
    loss, aux = lm.lm_loss(graphdef, p, batch)
    return loss * jnp.where(batch["poison"][0] > 0, jnp.nan, 1.0), aux

  def batch_fn(step):
    rng = np.random.default_rng(step)
    return {"tokens": rng.integers(0, 64, (2, 9)).astype(np.int32),
            "mask": np.ones((2, 9), np.int32), "poison": np.full((2,), step >= 2, np.int32)}

  fc = FitConfig(steps=10, lr=1e-3, ckpt_every=1, log_every=1, keep_ckpts=3)
  logs = []
  with pytest.raises(DgpoError, match="3 consecutive non-finite steps.*Last good checkpoint: "
                                      "step 2"):
    fit("nan", str(tmp_path), Model(None, gd, params, sh), mesh, batch_fn, fc, 0, logs.append,
        loss_fn=loss_fn)
  assert sum("non-finite loss or gradient; step skipped" in m for m in logs) == 3
  rows = [json.loads(l) for l in open(tmp_path / "metrics_nan.jsonl")]
  assert [r["step"] for r in rows if r.get("skipped")] == [3, 4, 5]
  ck = Checkpointer(str(tmp_path / "checkpoints" / "nan"))
  step, state, _ = ck.restore(None)
  assert step == 2  # skipped steps were never saved: the newest checkpoint is the good one
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.slow
@needs_shared
def test_retrieval_server_under_load(tmp_path):
  """32 clients × 200 requests (one in ten malformed) against the real sample's BM25 index."""
  from benchmarks import server_load
  from dgpo_jax.retrieval import index as index_lib
  index_lib.build(WIKI, str(tmp_path / "bm25"), "bm25")
  res = server_load.run(str(tmp_path / "bm25"), clients=32, requests=200, bad_every=10,
                        time_cap_s=240)
  print(json.dumps(res))
  assert res["failed"] == 0, res["failures"]
  assert res["good_requests_ok"] == 32 * 180
  assert res["malformed_answered_400"] == res["malformed_sent"] == 32 * 20
  assert res["clean_shutdown"]
  assert res["latency_ms"]["p99"] < 5000
