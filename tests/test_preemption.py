"""Preemption (SIGTERM → checkpoint at a step boundary → exit 75 → identical resume), and
writes that fail for lack of space: one line naming the path, the previous checkpoint intact,
a resume once the disk is writable. End-to-end SIGTERMs of `main` are in test_reliability.py
(one process) and test_multihost.py (two)."""

import json
import os
import resource
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from dgpo_jax.eval import evaluate as E
from dgpo_jax.rollout.engine import Trajectory
from dgpo_jax.utils import checkpoint as ckpt_lib
from dgpo_jax.utils import cli, preemption
from dgpo_jax.utils.checkpoint import Checkpointer
from dgpo_jax.utils.errors import DgpoError


@pytest.fixture(autouse=True)
def _clean():
  preemption.reset()
  yield
  preemption.reset()


def _tiny():
  from dgpo_jax.models import config as C
  from dgpo_jax.models.decoder import Decoder
  from dgpo_jax.parallel import sharding
  cfg = C.preset("tiny-llama", vocab_size=64)
  mesh = sharding.make_mesh("data:1", devices=jax.devices()[:1])
  gd, params, sh = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh, ())
  return gd, params, sh, mesh


def _batch(step):
  rng = np.random.default_rng(step)
  return {"tokens": rng.integers(0, 64, (2, 9)).astype(np.int32),
          "mask": np.ones((2, 9), np.int32)}


def _fit(wd, batch_fn=_batch, steps=8, ckpt_every=4, logs=None):
  from dgpo_jax.train.loop import FitConfig, fit
  from dgpo_jax.train.step import Model
  gd, params, sh, mesh = _tiny()
  fc = FitConfig(steps=steps, lr=1e-3, ckpt_every=ckpt_every, log_every=4, keep_ckpts=3)
  return fit("t", str(wd), Model(None, gd, params, sh), mesh, batch_fn, fc, 0,
             (logs if logs is not None else []).append)


@pytest.mark.slow
def test_sigterm_stops_at_a_step_boundary_and_resumes_identically(tmp_path, monkeypatch, capsys):
  """SIGTERM during step 3 → step 3 finishes, is checkpointed (off the every-4 grid) and
  `Preempted` is raised; a second SIGTERM during that save changes nothing; the resumed fit
  ends with params equal to an uninterrupted one's."""
  ref, _ = _fit(tmp_path / "ref")
  preemption.install()

  def batch_fn(step):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # the notice arrives while step 3 is computed
    return _batch(step)

  real_save = Checkpointer.save

  def save_under_fire(self, step, state, meta, force=True):
    os.kill(os.getpid(), signal.SIGTERM)  # a second notice, mid-save
    return real_save(self, step, state, meta, force)

  monkeypatch.setattr(Checkpointer, "save", save_under_fire)
  with pytest.raises(preemption.Preempted, match="t checkpointed at step 3"):
    _fit(tmp_path / "run", batch_fn)
  err = capsys.readouterr().err
  assert "SIGTERM received: finishing the current step" in err
  assert "already stopping; the checkpoint in progress is completed" in err
  monkeypatch.setattr(Checkpointer, "save", real_save)
  ck = Checkpointer(str(tmp_path / "run" / "checkpoints" / "t"))
  assert ck.all_steps() == [3]
  assert ck.restore(None) is not None  # the save the second SIGTERM hit is whole
  ck.close()
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics_t.jsonl")]
  assert rows[-1]["step"] == 3  # the stopped step's metrics are written
  preemption.reset()
  logs = []
  out, _ = _fit(tmp_path / "run", logs=logs)
  assert "[t] resumed from step 3" in logs
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Scripted:
  """An engine whose answers are a pure function of the question and the batch's key."""

  def __init__(self, stop_on_call=None):
    self.calls, self.stop_on_call = [], stop_on_call

  def run(self, questions, rng, sp, contexts=None):
    self.calls.append(list(questions))
    if len(self.calls) == self.stop_on_call:
      preemption.request()
    salt = int(jax.random.randint(rng, (), 0, 1000))
    return [Trajectory(question=q, prompt_ids=[1, 2], response_ids=[3, 4], loss_mask=[1, 1],
                       logprobs=[-0.25, -1.5], turns=[{"kind": "answer", "start": 0, "end": 2}],
                       answer=f"{q}:{salt}", flags={"x": 1}, done=True) for q in questions]


def test_preempted_rollouts_keep_finished_batches_and_resume_identically(tmp_path):
  qs = [{"question": f"q{i}"} for i in range(10)]
  ref = E.rollouts(_Scripted(), qs, 3, rng_seed=5)
  part = str(tmp_path / "tgo.partial")
  with pytest.raises(preemption.Preempted, match=r"tgo checkpointed at step 2"):
    E.rollouts(_Scripted(stop_on_call=2), qs, 3, rng_seed=5, label="tgo", partial=part)
  assert json.load(open(part + ".p0.json"))["batches"] == 2
  preemption.reset()
  again = _Scripted()
  out = E.rollouts(again, qs, 3, rng_seed=5, label="tgo", partial=part)
  assert again.calls == [["q6", "q7", "q8"], ["q9"]]  # only the batches not kept
  assert out == ref
  assert not os.path.exists(part + ".p0.json")
  # rows kept for other questions are not reused
  with pytest.raises(preemption.Preempted):
    E.rollouts(_Scripted(stop_on_call=1), qs, 3, rng_seed=5, partial=part)
  preemption.reset()
  other = _Scripted()
  E.rollouts(other, qs[:7], 3, rng_seed=5, partial=part)
  assert len(other.calls) == 3


@pytest.fixture
def small_files():
  """RLIMIT_FSIZE as a full disk: a write past 64 KB fails (EFBIG) while it is set."""
  old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  old = resource.getrlimit(resource.RLIMIT_FSIZE)
  state = {}

  def full(on=True):
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, old[1]) if on else old)
    state["on"] = on
  yield full
  resource.setrlimit(resource.RLIMIT_FSIZE, old)
  signal.signal(signal.SIGXFSZ, old_sig)


# orbax's writer thread, failed by the full disk, leaves a callback on its closed event loop
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, small_files):
  ref, _ = _fit(tmp_path / "ref", steps=6, ckpt_every=2)

  def batch_fn(step):
    small_files(step == 3)  # the disk is full while step 4 is saved
    return _batch(step)

  with pytest.raises(DgpoError) as e:
    _fit(tmp_path / "run", batch_fn, steps=6, ckpt_every=2)
  small_files(False)
  msg = str(e.value)
  assert "\n" not in msg
  assert f"cannot write checkpoint step 4 to {tmp_path / 'run' / 'checkpoints' / 't'}" in msg
  assert "File too large (errno 27)" in msg and "newest checkpoint is still step 2" in msg, msg
  ck = Checkpointer(str(tmp_path / "run" / "checkpoints" / "t"))
  assert ck.all_steps() == [2] and ck.restore(None)[0] == 2
  ck.close()
  assert os.listdir(tmp_path / "run" / "checkpoints" / "t") == ["2"]  # no half-written step
  out, _ = _fit(tmp_path / "run", steps=6, ckpt_every=2)  # space is back: resumes from 2
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_full_disk_during_a_results_write_names_the_path(tmp_path, small_files):
  f = str(tmp_path / "eval" / "results.json")
  cli.write_json(f, {"em": 0.5})
  small_files(True)
  try:
    with pytest.raises(DgpoError, match=rf"cannot write {f}: File too large \(errno 27\)"):
      cli.write_json(f, {"samples": "x" * (200 << 10)})
  finally:
    small_files(False)
  assert json.load(open(f)) == {"em": 0.5}  # the previous file is untouched
  assert os.listdir(tmp_path / "eval") == ["results.json"]


def test_write_error_reads_the_os_reason_out_of_orbax_text():
  e = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database: Failed to '
                 "write 1869526 bytes to file 7: No space left on device [os_error_code='28']")
  assert ckpt_lib.write_error(e) == "No space left on device (errno 28)"
  assert ckpt_lib.write_error(PermissionError(13, "Permission denied")) == (
      "Permission denied (errno 13)")
  e = ValueError("Error writing \"w/0.0\": File too large [os_error_code=27]")  # unquoted
  assert ckpt_lib.write_error(e) == "File too large (errno 27)"
  e = RuntimeError("save failed: [Errno 28] on /ckpt")  # only the number survives
  assert ckpt_lib.write_error(e) == f"{os.strerror(28)} (errno 28)"
  try:  # the OSError is the cause of what orbax raises
    try:
      raise OSError(27, "File too large")
    except OSError as inner:
      raise ValueError("commit failed") from inner
  except ValueError as outer:
    assert ckpt_lib.write_error(outer) == "File too large (errno 27)"
  group = ExceptionGroup("writes", [ValueError("x"), OSError(122, "Disk quota exceeded")])
  assert ckpt_lib.write_error(group) == "Disk quota exceeded (errno 122)"
