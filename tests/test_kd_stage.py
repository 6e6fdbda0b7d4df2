"""The KD stage's epoch loop (`method.distill_stage`): which epochs it validates, where it
stops, and what a resumed stage reads back. The training steps are stubbed: their numerics
are tested in test_rl.py and test_methods.py."""

import json

import pytest

from configs import synthetic
from dgpo_jax.pipeline import method, stages, steps
from dgpo_jax.train.step import Model
from dgpo_jax.utils.errors import DgpoError


def _stage(tmp_path, monkeypatch, ems, **kd):
  """Runs distill_stage on 8 rows with `fit` stubbed; returns (history, the params it
  validated, the step each `fit` call trained to)."""
  c = synthetic.get_config("smoke")
  c.kd.update({"epochs": 5, "batch_size": 4, **kd})
  monkeypatch.setattr(steps, "kd_update", lambda *a: None)
  trained = []

  def fake_fit(name, workdir, model, mesh, batch_fn, fc, *a, **k):
    trained.append(fc.steps)
    return fc.steps, {"loss": 1.0 / fc.steps}
  monkeypatch.setattr(method, "fit", fake_fit)
  seen = []

  def evaluate(params):
    seen.append(params)
    return {"em": ems[len(seen) - 1], "n": 2}
  monkeypatch.setattr(method.evaluation, "headline", lambda f: {"em": f["em"]})
  student = Model(None, None, 0, None)
  data = {"tokens": [0] * 8}
  (tmp_path / "eval").mkdir(exist_ok=True)
  _, history = method.distill_stage(c, str(tmp_path), "kd-x", student, None, data, "ce_fkl",
                                    1.0, None, evaluate)
  return history, seen, trained


def test_every_epoch_with_val_every_1(tmp_path, monkeypatch):
  history, seen, trained = _stage(tmp_path, monkeypatch, [0.1] * 5, val_every=1)
  assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
  assert seen == [2, 4, 6, 8, 10] and trained == seen  # 2 steps an epoch


def test_val_every_skips_epochs_but_not_the_last(tmp_path, monkeypatch):
  history, seen, trained = _stage(tmp_path, monkeypatch, [0.1] * 5, val_every=2)
  assert [h["epoch"] for h in history] == [2, 4, 5]
  assert seen == [4, 8, 10] and trained == [2, 4, 6, 8, 10]
  saved = json.load(open(tmp_path / "eval" / "kd-x_val.json"))
  assert [h["epoch"] for h in saved] == [2, 4, 5]
  # resumed: the validated epochs are read back, not rolled out again
  _, seen_again, _ = _stage(tmp_path, monkeypatch, [], val_every=2)
  assert seen_again == []


def test_threshold_is_checked_on_validated_epochs(tmp_path, monkeypatch):
  history, seen, trained = _stage(tmp_path, monkeypatch, [0.2, 0.5], val_every=2,
                                  em_threshold=0.4)
  assert [h["epoch"] for h in history] == [2, 4] and trained == [2, 4, 6, 8]


def test_a_stage_trained_on_another_schedule_is_refused(tmp_path, monkeypatch):
  """The stage's name does not say how long it trained: resuming a 5-epoch stage as a
  3-epoch one (or reading it back) stops with a message naming both schedules."""
  _stage(tmp_path, monkeypatch, [0.1] * 5, val_every=1)
  kept = json.load(open(tmp_path / "checkpoints" / "kd-x.schedule.json"))
  assert kept == {"epochs": 5, "steps_per_epoch": 2, "batch_size": 4}
  _stage(tmp_path, monkeypatch, [], val_every=1)  # the same schedule resumes
  with pytest.raises(DgpoError, match=r"kd-x was trained with .*'epochs': 5.*'epochs': 3"):
    _stage(tmp_path, monkeypatch, [0.1] * 3, val_every=1, epochs=3)


@pytest.mark.parametrize("bad", [0, -1, True])
def test_a_bad_val_every_is_named_before_any_work(bad):
  c = synthetic.get_config("smoke")
  c.kd.val_every = bad
  with pytest.raises(DgpoError, match="config.kd.val_every"):
    stages.plan(c)
