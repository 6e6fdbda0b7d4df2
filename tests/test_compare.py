"""`python -m dgpo_jax.compare`: paired EM differences between a workdir's test evaluations."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, cpu_env
from dgpo_jax.eval import compare, stats
from dgpo_jax.utils.errors import DgpoError


def _write(d, label, em):
  os.makedirs(os.path.join(d, "eval"), exist_ok=True)
  with open(os.path.join(d, "eval", f"test_{label}.json"), "w") as f:
    json.dump({"em": float(np.mean(em)), "em_per_question": list(em)}, f)


def test_pairs_are_question_by_question(tmp_path):
  rng = np.random.default_rng(0)
  a = (rng.random(200) < 0.6).astype(float)
  b = np.where(rng.random(200) < 0.9, a, 0.0)  # b loses some of a's questions, never gains
  _write(tmp_path, "x", a)
  _write(tmp_path, "y", b)
  _write(tmp_path, "z", a)
  rows = compare.run(str(tmp_path), ["x:y"], str(tmp_path / "cmp"))
  assert rows[0]["diff"] == pytest.approx(a.mean() - b.mean())
  assert (rows[0]["lo"], rows[0]["hi"]) == pytest.approx(stats.paired_diff_ci(a, b)[1:])
  assert rows[0]["lo"] > 0  # paired, the interval excludes 0
  assert json.load(open(tmp_path / "cmp.json")) == rows
  assert len(compare.compare(compare.load(str(tmp_path / "eval")))) == 3  # every pair
  with pytest.raises(DgpoError, match="no evaluation 'w'"):
    compare.run(str(tmp_path), ["x:w"], "")
  _write(tmp_path, "short", a[:10])
  with pytest.raises(DgpoError, match="not paired"):
    compare.run(str(tmp_path), ["x:short"], "")


def test_cli_refuses_a_bad_pair_in_one_line(tmp_path):
  _write(tmp_path, "x", [1.0, 0.0])
  _write(tmp_path, "y", [0.0, 0.0])
  r = subprocess.run([sys.executable, "-m", "dgpo_jax.compare", f"--workdir={tmp_path}",
                      "--pairs=x-y"], capture_output=True, text=True, cwd=ROOT,
                     env=cpu_env(1), timeout=120)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "error: --pairs 'x-y': expected A:B (labels as in test_<label>.json)"]
