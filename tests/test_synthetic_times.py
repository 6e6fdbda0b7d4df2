"""`benchmarks.synthetic_times` times runs from scratch only; the smoke config's models use
one attention block (docs/benchmarks.md, "Decoder choices")."""

import subprocess
import sys
import types

from conftest import ROOT
from configs import synthetic
from dgpo_jax.pipeline import prepare


def _times(*args):
  return subprocess.run([sys.executable, "-m", "benchmarks.synthetic_times", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)


def test_refuses_a_workdir_that_holds_runs_and_unknown_runs(tmp_path):
  (tmp_path / "smoke").mkdir()  # a finished run would be read back in seconds
  r = _times(f"--workdir={tmp_path}", "--only=smoke")
  assert r.returncode != 0 and "is not empty" in r.stderr and str(tmp_path) in r.stderr
  r = _times(f"--workdir={tmp_path / 'new'}", "--only=smoke,frist")
  assert r.returncode != 0 and "unknown runs ['frist']" in r.stderr


def test_smoke_models_use_one_attention_block_and_the_default_keeps_blocks():
  tok = types.SimpleNamespace(vocab_size=512, eos_ids=(2,), pad_id=0, bos_id=1)
  smoke, default = synthetic.get_config("smoke"), synthetic.get_config("")
  for which in ("student", "teacher"):
    assert prepare.model_cfg(smoke, which, tok).attn_chunk == 0
    assert prepare.model_cfg(default, which, tok).attn_chunk == 128


def test_prepared_must_hold_a_preparation_and_times_only_later_runs(tmp_path):
  r = _times(f"--workdir={tmp_path / 'a'}", f"--prepared={tmp_path}", "--only=method")
  assert r.returncode != 0 and "holds no finished preparation" in r.stderr
  (tmp_path / "tgo").mkdir()
  (tmp_path / "prepare_result.json").write_text("{}")
  r = _times(f"--workdir={tmp_path / 'a'}", f"--prepared={tmp_path}", "--only=smoke,method")
  assert r.returncode != 0 and "times method and seed" in r.stderr
