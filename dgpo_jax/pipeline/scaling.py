"""Scaling studies on the synthetic world: student size × teacher size × method × seed.

Each (teacher, student) pair is a cell, `workdir/t<teacher>_s<student>/`, run by
`tables.run` (one preparation and TGO per cell, a workdir per seed, resumable). What does not
depend on the pair is made once and copied into later cells before they start: the world and
tokenizer (every cell), the pretrained and SFT'd teacher with its TGO and test evaluation
(cells of the same teacher), the pretrained student (cells of the same student). A shape is
written `<d_model>x<n_layers>x<d_ff>` (4 heads, 2 KV heads). With `config.scaling.workers` > 1,
each teacher's cells run in a process of their own (`pipeline.workers`), side by side.

Products: `scaling.json`, `scaling.md` and `scaling.png` (test EM against student
parameters and against student training FLOPs, one line per method and teacher; the
DGPO − KD and DGPO − PPO margins with 95% CIs against student parameters).

Training FLOPs are 6 · N_student · D, with D the tokens of the student's training batches
(`tokens_seen` of its KD/SFT and RL stages' metrics, padded rows in KD, real tokens in RL,
RL counted once per PPO epoch). Rollout decoding, the experience pass and the teacher's
forward passes are not counted.
"""

import copy
import json
import os
import time
from typing import Optional

import numpy as np

from dgpo_jax.data import lm_data
from dgpo_jax.pipeline import prepare, stages
from dgpo_jax.pipeline import tables as tables_lib
from dgpo_jax.pipeline import workers as workers_lib
from dgpo_jax.train import loop
from dgpo_jax.utils import cli
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import log

WORLD = ("world", "tokenizer")
TEACHER = ("models/teacher", "checkpoints/teacher_lm", "checkpoints/teacher_sft",
           "eval/teacher_sft_val.json", "tgo", "eval/test_teacher.json")
STUDENT = ("models/student", "checkpoints/student_lm")
MARGINS = (("dgpo", "kd"), ("dgpo", "ppo"))


def parse_shape(spec: str, field: str) -> dict:
  """`"48x2x144"` → the model section (d_model 48, 2 layers, d_ff 144, 4 heads, 2 KV heads)."""
  parts = str(spec).split("x")
  if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
    fail(f"config.scaling.{field}: {spec!r} is not <d_model>x<n_layers>x<d_ff> (e.g. 48x2x144)")
  d, l, ff = map(int, parts)
  if d % 4:
    fail(f"config.scaling.{field}: {spec!r}: d_model {d} does not split into 4 heads")
  return dict(d_model=d, n_layers=l, n_heads=4, n_kv_heads=2, d_ff=ff)


def cell_dir(workdir, teacher: str, student: str) -> str:
  return os.path.join(workdir, f"t{teacher}_s{student}")


def _seed_cell(workdir, teacher, student, done):
  """Copies into a new cell's shared dir what earlier cells already made."""
  dst = os.path.join(cell_dir(workdir, teacher, student), "shared")
  for t, s in done:
    src = os.path.join(cell_dir(workdir, t, s), "shared")
    prepare.copy_prepared(src, dst, WORLD + (TEACHER if t == teacher else ())
                          + (STUDENT if s == student else ()))


def cell_config(config, teacher, student):
  c = copy.deepcopy(config)
  with c.unlocked():
    c.teacher.update(parse_shape(teacher, "teachers"))
    c.student.update(parse_shape(student, "students"))
  return c


def run(config, workdir) -> dict:
  """Runs the grid of `config.scaling`; resumable. Returns the summary (scaling.json).

  With `config.scaling.workers` > 1 each teacher's cells first run in a process of their
  own (`pipeline.workers`), which makes its own world and pretrained students (the same
  data and weights: they depend on the seed only; a tokenizer records its own path) instead
  of copying them from another teacher's cells; the pass over the grid here then finds
  every run done and reads it back."""
  if "world" not in config or "scaling" not in config:
    fail("the scaling command runs on configs/synthetic.py:scaling (or :scaling_smoke)")
  sc = config.scaling
  for t, s in grid(sc):
    parse_shape(t, "teachers"), parse_shape(s, "students")
  bad = [m for m in sc.methods if m not in stages.METHODS]
  if bad:
    fail(f"config.scaling.methods: unknown {bad} (known: {', '.join(stages.METHODS)})")
  t0 = time.time()
  workers = int(sc.get("workers", 1))
  if workers > 1 and len(sc.teachers) > 1:
    parts = [workers_lib.Part(f"teacher_{t}", run_cells, (_narrowed(config, t), workdir,
                                                          cli.default_xla_cache()))
             for t in sc.teachers]
    workers_lib.run(parts, os.path.join(workdir, "logs"), workers)
  cells = run_cells(config, workdir)
  out = {"grid": {k: list(sc[k]) for k in ("teachers", "students", "methods", "seeds")},
         "cells": cells, "wall_s": round(time.time() - t0, 1)}
  write(workdir, out)
  return out


def grid(sc) -> list:
  """The (teacher, student) cells of `config.scaling`, in run order."""
  return [(t, s) for t in sc.teachers for s in sc.students]


def _narrowed(config, teacher: str):
  """`config` with the grid narrowed to one teacher, in one process."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.scaling.teachers, c.scaling.workers = (teacher,), 1
  return c


def run_cells(config, workdir, xla_cache: Optional[str] = None) -> list:
  """Runs (or reads back) every cell of `config.scaling`, one after another; returns each
  cell's summary. `xla_cache`: the compilation cache to turn on (a worker process)."""
  if xla_cache is not None:
    cli.compilation_cache(xla_cache)
  sc = config.scaling
  pairs = grid(sc)
  runs = tuple((m, "") for m in sc.methods)
  done, cells = [], []
  for i, (t, s) in enumerate(pairs):
    log(f"[scaling] cell {i + 1}/{len(pairs)}: teacher {t}, student {s}")
    _seed_cell(workdir, t, s, done)
    c = cell_config(config, t, s)
    tab = tables_lib.run(c, cell_dir(workdir, t, s), list(sc.seeds), runs)
    cells.append(summarize_cell(c, cell_dir(workdir, t, s), t, s, tab, runs))
    done.append((t, s))
  return cells


def _params(config, shared: str) -> dict:
  tok = prepare.world_tokenizer(config, os.path.join(shared, "world"),
                                lm_data.spm_prefix(shared, config.tokenizer))
  return {w: prepare.model_cfg(config, w, tok).num_params() for w in ("student", "teacher")}


def train_tokens(seed_dir: str, results: dict, ppo_epochs: int) -> Optional[float]:
  """Tokens of the student's training batches in one run (see the module docstring); None
  when a stage's metrics do not record them (rows written before `tokens_seen` existed),
  rather than an undercount."""
  total = 0.0
  for kind, name in results.get("stages", {}).items():
    f = loop.metrics_file(seed_dir, name)
    if kind in ("kd", "rl") and os.path.isfile(f):
      rows = cli.read_jsonl(f)
      if any("tokens_seen" not in r for r in rows):
        return None
      total += sum(r["tokens_seen"] for r in rows) * (ppo_epochs if kind == "rl" else 1)
  return total


def summarize_cell(config, cell: str, teacher, student, tab: dict, runs) -> dict:
  """One cell's row: parameter counts, reference EMs, per-method EM (mean ± std over seeds)
  and training FLOPs, and the DGPO − KD / DGPO − PPO paired margins."""
  n = _params(config, os.path.join(cell, "shared"))
  methods = {}
  for m, a in runs:
    name = tables_lib.tag(m, a)
    tokens = []  # per seed
    for s in tab["seeds"]:
      f = tables_lib.result_file(cell, s, m, a)
      if os.path.isfile(f):
        with open(f) as fh:
          res = json.load(fh)
        tokens.append(train_tokens(tables_lib.seed_dir(cell, s), res, config.ppo.epochs))
    known = tokens and None not in tokens
    methods[name] = {"em": tab["runs"][name]["em"],
                     "train_flops": 6 * n["student"] * float(np.mean(tokens)) if known else None}
  ref = tab.get("reference", {})
  margins = {f"{a}-{b}": c for a, b in MARGINS for c in tab.get("claims", [])
             if (c["a"], c["b"]) == (a, b)}
  return {"teacher": teacher, "student": student, "teacher_params": n["teacher"],
          "student_params": n["student"],
          "teacher_em": (ref.get("teacher") or {}).get("em"),
          "student_base_em": (ref.get("student_base") or {}).get("em"),
          "methods": methods, "margins": margins}


def markdown(out: dict) -> str:
  methods = list(out["grid"]["methods"])
  cell = tables_lib.cell_text
  s = (f"Seeds: {', '.join(map(str, out['grid']['seeds']))}. Test EM of the final student "
       f"(greedy), mean ± std over seeds; margins are paired differences with 95% bootstrap "
       f"CIs over seeds and questions.\n\n| teacher (params) | student (params) | teacher EM "
       f"| base EM | " + " | ".join(methods) + " | " + " | ".join(
           f"{a} − {b}" for a, b in MARGINS) + " |\n" + "|---" * (4 + len(methods)
                                                             + len(MARGINS)) + "|\n")
  for c in out["cells"]:
    ms = [c["methods"][m]["em"] for m in methods]
    mg = [c["margins"].get(f"{a}-{b}") for a, b in MARGINS]
    s += (f"| {c['teacher']} ({c['teacher_params'] / 1e6:.2f}M) | {c['student']} "
          f"({c['student_params'] / 1e6:.2f}M) | {cell(c['teacher_em'])} | "
          f"{cell(c['student_base_em'])} | " + " | ".join(cell(v) for v in ms) + " | "
          + " | ".join("-" if g is None else f"{g['diff']:+.3f} [{g['ci95'][0]:+.3f}, "
                       f"{g['ci95'][1]:+.3f}]" for g in mg) + " |\n")
  return s


def plot(out: dict, path: str) -> bool:
  """EM vs student params, EM vs training FLOPs, margins vs student params."""
  plt = tables_lib.pyplot("scaling.png")
  if plt is None:
    return False
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for t in out["grid"]["teachers"]:
    cells = sorted((c for c in out["cells"] if c["teacher"] == t),
                   key=lambda c: c["student_params"])
    x = [c["student_params"] for c in cells]
    for m in out["grid"]["methods"]:
      em = [(c["methods"][m]["em"] or {}).get("mean", np.nan) for c in cells]
      axes[0].plot(x, em, marker="o", label=f"{m}, teacher {t}")
      fl = [c["methods"][m]["train_flops"] or np.nan for c in cells]
      axes[1].plot(fl, em, marker="o", label=f"{m}, teacher {t}")
    for a, b in MARGINS:
      g = [c["margins"].get(f"{a}-{b}") for c in cells]
      keep = [(xi, gi) for xi, gi in zip(x, g) if gi]
      if keep:
        xs, gs = zip(*keep)
        d = np.array([gi["diff"] for gi in gs])
        err = np.array([[gi["diff"] - gi["ci95"][0], gi["ci95"][1] - gi["diff"]] for gi in gs]).T
        axes[2].errorbar(xs, d, yerr=err, marker="o", capsize=3,
                         label=f"{a} − {b}, teacher {t}")
  for ax, (xl, yl) in zip(axes, (("student parameters", "test EM"),
                                 ("student training FLOPs (6·N·D)", "test EM"),
                                 ("student parameters", "EM margin (95% CI)"))):
    ax.set_xscale("log")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.legend(fontsize=6)
  axes[2].axhline(0, color="gray", lw=0.8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write(workdir: str, out: dict):
  tables_lib.write_products(workdir, "scaling", out, markdown(out),
                            lambda: plot(out, os.path.join(workdir, "scaling.png")))
