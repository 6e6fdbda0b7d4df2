"""Two processes × 4 fake CPU devices (jax.distributed over 127.0.0.1) run the same LM steps
as one process × 8 devices, with the same numbers; disagreeing configs are refused."""

import json
import os
import socket
import subprocess
import sys

from conftest import ROOT, needs_shared

ARGS = ("--config.data.max_docs=200", "--config.data.seq_len=64", "--config.train.steps=6",
        "--config.train.batch_size=8", "--config.train.warmup_steps=2",
        "--config.train.log_every=3", "--config.train.ckpt_every=3", "--config.model.d_model=64",
        "--config.model.n_layers=2", "--config.model.d_ff=128",
        "--config.tokenizer.vocab_size=512", "--config.generate.max_new_tokens=4")


def _port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, devices, extra=(), per_process=None):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, "-m", "dgpo_jax.main", "--config=configs/synthetic.py:lm",
         f"--workdir={workdir}", "--config.mesh=data:-1", *ARGS, *extra]
  if per_process is None:
    return [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)]
  return [subprocess.Popen(cmd + list(p), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for p in per_process]


def _wait(procs, timeout=500):
  out = []
  for p in procs:
    so, se = p.communicate(timeout=timeout)
    out.append((p.returncode, so, se))
  return out


@needs_shared
def test_two_processes_match_one(tmp_path):
  port = _port()
  multi = [("--coordinator_address=127.0.0.1:%d" % port, "--num_processes=2",
            f"--process_id={i}") for i in range(2)]
  res = _wait(_launch(tmp_path / "multi", 4, per_process=multi))
  for rc, so, se in res:
    assert rc == 0, se[-3000:]
  (rc, so, se), = _wait(_launch(tmp_path / "single", 8))
  assert rc == 0, se[-3000:]
  m = [json.loads(l) for l in open(tmp_path / "multi" / "metrics_lm.jsonl")]
  s = [json.loads(l) for l in open(tmp_path / "single" / "metrics_lm.jsonl")]
  assert [r["step"] for r in m] == [r["step"] for r in s] == [3, 6]
  for a, b in zip(m, s):
    assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(b["loss"]))
  assert (tmp_path / "multi" / "checkpoints" / "lm" / "6").is_dir()


@needs_shared
def test_processes_with_different_configs_are_refused(tmp_path):
  port = _port()
  multi = [(f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
            f"--config.seed={i}") for i in range(2)]
  res = _wait(_launch(tmp_path / "bad", 4, per_process=multi), timeout=200)
  assert all(rc == 2 for rc, _, _ in res), [r[2][-500:] for r in res]
  assert all("disagree on the config" in se for _, _, se in res)
