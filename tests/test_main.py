"""End to end: `python -m dgpo_jax.main` on the smoke config; resume; config files load."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, needs_shared, run_main


LM_SMOKE = ("--config.data.max_docs=200", "--config.data.seq_len=64", "--config.train.steps=12",
            "--config.train.batch_size=8", "--config.train.warmup_steps=2",
            "--config.train.log_every=4", "--config.model.d_model=64", "--config.model.n_layers=2",
            "--config.model.d_ff=128", "--config.tokenizer.vocab_size=512",
            "--config.generate.max_new_tokens=8")


_main = run_main


@pytest.mark.slow
@needs_shared
def test_smoke_run_and_resume(tmp_path):
  a = _main(tmp_path / "a", *LM_SMOKE, "--config.train.ckpt_every=6")
  assert a.returncode == 0, a.stderr[-3000:]
  full = [json.loads(l) for l in open(tmp_path / "a" / "metrics_lm.jsonl")]
  assert full[-1]["step"] == 12 and full[-1]["loss"] < full[0]["loss"]
  assert (tmp_path / "a" / "samples.txt").is_file()
  # The same run as if interrupted after the checkpoint of step 6: a copy of it without what
  # came later (checkpoint 12, its metrics rows, the samples), rerun to the end.
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "lm" / "12")
  for f in ("lm_result.json", "samples.txt"):
    os.remove(tmp_path / "b" / f)
  (tmp_path / "b" / "metrics_lm.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in full if r["step"] <= 6))
  c = _main(tmp_path / "b", *LM_SMOKE, "--config.train.ckpt_every=6")
  assert c.returncode == 0, c.stderr[-3000:]
  assert "resumed from step 6" in c.stdout
  resumed = [json.loads(l) for l in open(tmp_path / "b" / "metrics_lm.jsonl")][-1]
  assert resumed["step"] == 12
  assert resumed["loss"] == full[-1]["loss"]  # CPU determinism: same numbers after resume
  res_a = json.load(open(tmp_path / "a" / "lm_result.json"))["samples"]
  res_b = json.load(open(tmp_path / "b" / "lm_result.json"))["samples"]
  assert res_a == res_b


@pytest.mark.slow
def test_synthetic_smoke_train_end_to_end(smoke_run):
  """prepare → TGO → KD → DGPO → test evaluation → results.json and report.md; `ask` talks
  to the trained student."""
  s = smoke_run
  res = json.load(open(s / "prepare_result.json"))
  assert {"teacher_dev_em", "student_dev_em", "teacher_sft_loss"} <= set(res)
  for f in ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "drills.jsonl"):
    assert (s / "world" / f).is_file()
  assert (s / "models" / "teacher" / "tokenizer.model").is_file()
  results = json.load(open(s / "results.json"))
  assert results["plan"] == ["tgo", "kd", "rl"]
  assert set(results["test"]) == {"student_base", "teacher", "student_kd", "student_final"}
  for row in results["test"].values():
    assert 0.0 <= row["em"] <= 1.0 and "single_hop" in row["em_by_family"]
  assert results["stages"] == {"kd": "kd-ce_fkl-lam1-all-16q-t0", "rl": "rl-dgpo"}
  rl = [json.loads(l) for l in open(s / "metrics_rl-dgpo.jsonl")]
  assert [m["step"] for m in rl] == [1, 2]
  assert sorted(os.listdir(s / "checkpoints" / "rl-dgpo")) == ["1", "2"]
  assert all(k in rl[-1] for k in ("em", "kl", "entropy", "clip_frac", "vf_loss",
                                   "explained_var", "actor_grad_norm", "critic_grad_norm",
                                   "searches_per_question", "tokens_per_s"))
  report = open(s / "report.md").read()
  assert "## Test EM" in report and "student_final" in report and "Sample trajectory" in report
  # Resuming after kills at random points is tests/test_reliability.py's job.
  assert "arcap" in results["test"]["teacher"]
  assert results["test"]["teacher"]["arcap"]["thinking_n"] == 8  # gold passages from the world
  q = json.loads(open(s / "world" / "dev.jsonl").readline())["question"]
  final = s / "models" / "student_final-dgpo"  # the trained student, HF format
  assert (final / "config.json").is_file() and (final / "tokenizer.model").is_file()
  ask = subprocess.run([sys.executable, "-m", "dgpo_jax.ask", "--config=configs/synthetic.py:smoke",
                        f"--workdir={s}", f"--checkpoint={final}",
                        f"--question={q}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert ask.returncode == 0, ask.stderr[-2000:]
  assert ask.stdout.startswith(f"Question: {q}") and "\nAnswer: " in ask.stdout
  assert "[model ·" in ask.stdout


def test_misspelt_field_and_bad_stage_are_errors(tmp_path):
  r = _main(tmp_path, "--config.train.stepz=3")
  assert r.returncode != 0 and 'Did you mean "steps"' in r.stderr
  r = _main(tmp_path, "--config.stage=dance")
  assert r.returncode == 2 and "config.stage='dance'" in r.stderr


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_loads(path):
  import importlib.util
  name = os.path.basename(path)[:-3]
  if name in ("__init__", "common"):
    return
  spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  doc = mod.__doc__ or ""
  assert "python -m dgpo_jax.main" in doc, f"{name}: docstring must give the command"
  variants = [""] + [v.split(":")[1].split()[0] for v in doc.split() if f"{name}.py:" in v]
  for v in variants:
    c = mod.get_config(v)
    assert c.seed is not None and c.stage
