"""The scaling command: grid shapes are checked, and the smoke grid runs end to end."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, cpu_env
from configs import synthetic
from dgpo_jax.pipeline import prepare, scaling
from dgpo_jax.utils.errors import DgpoError


def test_shapes_parse_and_bad_ones_name_the_field():
  assert scaling.parse_shape("48x2x144", "students") == dict(d_model=48, n_layers=2, n_heads=4,
                                                             n_kv_heads=2, d_ff=144)
  with pytest.raises(DgpoError, match=r"config.scaling.students: '48x2'"):
    scaling.parse_shape("48x2", "students")
  with pytest.raises(DgpoError, match="4 heads"):
    scaling.parse_shape("30x1x64", "teachers")
  c = synthetic.get_config("scaling")
  assert len(c.scaling.students) >= 4 and len(c.scaling.teachers) >= 2
  assert len(c.scaling.seeds) >= 2 and {"dgpo", "kd", "ppo"} <= set(c.scaling.methods)


def test_train_tokens_count_kd_once_and_rl_per_epoch_and_refuse_to_undercount(tmp_path):
  res = {"stages": {"kd": "kd-x", "rl": "rl-dgpo"}}
  write = lambda name, rows: (tmp_path / f"metrics_{name}.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  write("kd-x", [{"step": 1, "tokens_seen": 100.0}, {"step": 2, "tokens_seen": 50.0}])
  write("rl-dgpo", [{"step": 1, "tokens_seen": 10.0}])
  assert scaling.train_tokens(str(tmp_path), res, ppo_epochs=2) == 170.0
  write("rl-dgpo", [{"step": 1, "tokens_seen": 10.0}, {"step": 2}])  # an older run's row
  assert scaling.train_tokens(str(tmp_path), res, ppo_epochs=2) is None


def test_workers_run_each_teacher_in_a_process_then_read_the_grid_back(tmp_path, monkeypatch):
  config = synthetic.get_config("scaling")
  with config.unlocked():
    config.scaling.workers = 2  # `:scaling` runs in one process; the worker path is tested
  calls = []
  monkeypatch.setattr(scaling.workers_lib, "run",
                      lambda parts, log_dir, n: calls.append(("parallel", parts, log_dir, n)))
  monkeypatch.setattr(scaling, "run_cells", lambda c, wd, cache=None: calls.append(
      ("cells", c.scaling.teachers)) or [])
  monkeypatch.setattr(scaling, "write", lambda wd, out: None)
  scaling.run(config, str(tmp_path))
  (_, parts, log_dir, n), last = calls
  assert n == config.scaling.workers == 2 and log_dir == str(tmp_path / "logs")
  assert [p.name for p in parts] == [f"teacher_{t}" for t in config.scaling.teachers]
  for p, t in zip(parts, config.scaling.teachers):
    c, wd, _ = p.args
    assert p.target is scaling.run_cells and wd == str(tmp_path)
    assert c.scaling.teachers == (t,) and c.scaling.workers == 1
    assert c.scaling.students == config.scaling.students
  assert last == ("cells", config.scaling.teachers)  # the whole grid, read back in-process


@pytest.mark.slow
@pytest.mark.smoke_any_worker
def test_scaling_smoke_grid_writes_its_products(tmp_path, smoke_run):
  """The smoke grid (one teacher, two students, dgpo and kd) end to end. The shared smoke
  run's world and teacher (the same config's) stand for an earlier cell's: the first cell
  starts from them, and the second must get them from the first."""
  grid = synthetic.get_config("scaling_smoke").scaling
  wd = str(tmp_path / "sc")
  first = os.path.join(scaling.cell_dir(wd, grid.teachers[0], grid.students[0]), "shared")
  prepare.copy_prepared(str(smoke_run), first, scaling.WORLD + scaling.TEACHER)
  cmd = [sys.executable, "-m", "dgpo_jax.scaling",
         "--config=configs/synthetic.py:scaling_smoke", f"--workdir={wd}"]
  env = cpu_env(2)
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.load(open(os.path.join(wd, "scaling.json")))
  assert len(out["cells"]) == len(grid.teachers) * len(grid.students)
  for c in out["cells"]:
    assert c["teacher_params"] > c["student_params"] > 0
    for m in grid.methods:
      assert 0.0 <= c["methods"][m]["em"]["mean"] <= 1.0
      assert c["methods"][m]["train_flops"] > 0
    assert "dgpo-kd" in c["margins"]
  # dgpo trains more than kd (KD, then RL), so its FLOPs are larger
  assert all(c["methods"]["dgpo"]["train_flops"] > c["methods"]["kd"]["train_flops"]
             for c in out["cells"])
  # the teacher was copied into the second cell, not trained; each student was pretrained
  shared = [os.path.join(scaling.cell_dir(wd, grid.teachers[0], s), "shared")
            for s in grid.students]
  for d in shared:
    assert os.path.isdir(os.path.join(d, "checkpoints", "teacher_sft"))
    assert not os.path.isfile(os.path.join(d, "metrics_teacher_sft.jsonl"))
    assert os.path.isfile(os.path.join(d, "metrics_student_lm.jsonl"))
  for f in ("scaling.md", "scaling.png"):
    assert os.path.isfile(os.path.join(wd, f)), f
  # resumable: a second invocation reads every run back
  r2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert json.load(open(os.path.join(wd, "scaling.json")))["cells"] == out["cells"]
  # benchmarks.generalization reads each cell's KD student back, on both splits
  gen = os.path.join(wd, "generalization.json")
  r3 = subprocess.run([sys.executable, "-m", "benchmarks.generalization", f"--workdir={wd}",
                       "--variant=scaling_smoke", "--questions=4",
                       f"--out={gen}"],
                      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert r3.returncode == 0, r3.stderr[-3000:]
  cells = json.load(open(gen))["cells"]
  assert [(c["teacher"], c["student"]) for c in cells] == [(grid.teachers[0], s)
                                                           for s in grid.students]
  for c in cells:
    assert os.path.basename(c["checkpoint"]) == "kd-ce_fkl-lam1-all-16q-t0"
    for split in ("train", "test"):
      assert c[split]["n"] == 4 and 0.0 <= c[split]["em"] <= 1.0
