"""The paper's tables on the synthetic world: every method and ablation over several seeds.

One preparation and one TGO serve every run: the world, the SFT'd teacher and the pretrained
student are the fixed environment (as the paper's pretrained teacher is), and the teacher's
greedy trajectories do not depend on the seed. Each seed then has its own workdir, where the
methods share identical KD stages by name (dgpo, kd and the ablations after KD share one)
and the base-student and teacher evaluations. Runs happen in this process one after another,
so XLA's compiled steps are reused across methods of the same shapes.

Products in the workdir: `runs/seed<S>/<method>[-<ablation>].json` (each run's results),
`tables.json`, `tables.md` (main, ablation and ARCap tables, mean ± std over seeds) and
`curves.png` (EM, reward, KL and entropy vs RL step, mean over seeds).
"""

import copy
import json
import os
import shutil
import time
from typing import Callable

import numpy as np

from dgpo_jax.pipeline import method as method_lib
from dgpo_jax.pipeline import prepare, stages
from dgpo_jax.pipeline.report import FAMILIES
from dgpo_jax.train import loop
from dgpo_jax.utils import cli
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import log

MAIN = (("dgpo", ""), ("ppo", ""), ("sft_ppo", ""), ("kd", ""), ("distillm", ""), ("taid", ""),
        ("gkd", ""), ("grpo", ""))
ABLATIONS = tuple(("dgpo", a) for a in stages.ABLATIONS if a)
ARCAP_KEYS = ("thinking_em", "hit_ratio_first", "hit_ratio_all", "searches_per_question",
              "em_given_gold_retrieved", "answer_in_retrieved_share")
# The paper's claims as paired comparisons of final-student test EM: (claim, run a, run b,
# the sign of a − b the paper reports).
CLAIMS = (("DGPO beats KD", "dgpo", "kd", 1), ("DGPO beats PPO", "dgpo", "ppo", 1),
          ("DGPO beats SFT→PPO", "dgpo", "sft_ppo", 1),
          ("DGPO beats DistiLLM", "dgpo", "distillm", 1), ("DGPO beats TAID", "dgpo", "taid", 1),
          ("DGPO beats GKD", "dgpo", "gkd", 1),
          ("selective KL beats uniform KL", "dgpo", "dgpo-uniform_kl", 1),
          ("cold start helps", "dgpo", "dgpo-no_cold_start", 1),
          ("teacher guidance helps (vs PPO after KD)", "dgpo", "dgpo-no_teacher_guidance", 1),
          ("KD→PPO beats PPO→KD", "dgpo", "dgpo-inverted", 1),
          ("correct-only TGO beats all TGO", "dgpo", "dgpo-kd_with_incorrect_tgo", 1),
          ("KD beats PPO", "kd", "ppo", 1), ("GRPO trails PPO on compact models", "ppo", "grpo", 1))
CURVES = (("em", "EM of the rollouts"), ("token_reward_sum", "reward per trajectory"),
          ("kl", "KL estimate"), ("entropy", "entropy"))


def tag(method, ablation):
  return method + (f"-{ablation}" if ablation else "")


def _variant(config, **fields):
  c = copy.deepcopy(config)
  with c.unlocked():
    for k, v in fields.items():
      c[k] = v
  return c


def seed_dir(workdir, seed: int) -> str:
  """The workdir of a training seed's runs (they share its KD stages)."""
  return os.path.join(workdir, f"seed{seed}")


def result_file(workdir, seed: int, method: str, ablation: str = "") -> str:
  """Where a finished run's results are kept (a run with one is read back)."""
  return os.path.join(workdir, "runs", f"seed{seed}", tag(method, ablation) + ".json")


def run_config(config, method, ablation, seed):
  """One run's config: the method and training seed on the shared preparation's world."""
  return _variant(config, method=method, ablation=ablation, seed=seed,
                  world=dict(config.world.to_dict(), seed=prepare.world_seed(config)))


def run(config, workdir, seeds, runs=MAIN + ABLATIONS, against: str = "") -> dict:
  """Runs `runs` × `seeds`; resumable (finished runs are read back). Returns the tables;
  with `against` (another tables workdir) also `against_workdir`'s comparison."""
  if "world" not in config:
    fail("the tables command runs on the synthetic world (configs/synthetic.py)")
  from dgpo_jax.parallel import sharding
  mesh = sharding.make_mesh(config.mesh)
  for m, a in runs:  # every run's plan and batch sizes, before any expensive work
    c = _variant(config, method=m, ablation=a)
    stages.plan(c)
    method_lib.check_batches(c, mesh)
  t0 = time.time()
  shared = os.path.join(workdir, "shared")
  _, student, teacher, env = method_lib.setup_run(config, shared)
  # TGO once: as configured, and all trajectories (for kd_with_incorrect_tgo)
  for keep in sorted({bool(config.tgo.keep_incorrect), True}):
    c = _variant(config, tgo=dict(config.tgo.to_dict(), keep_incorrect=keep))
    method_lib.teacher_trajectories(c, shared, teacher, env.tok, env.retriever, env.train_q)
  log(f"[tables] preparation and TGO: {time.time() - t0:.0f} s")
  todo = [(s, m, a) for s in seeds for m, a in runs]
  done_n, t_runs = 0, time.time()
  results = {}
  for i, (seed, method, ablation) in enumerate(todo):
    wd = seed_dir(workdir, seed)
    out = result_file(workdir, seed, method, ablation)
    if os.path.isfile(out):
      results[(seed, method, ablation)] = json.load(open(out))
      continue
    prepare.copy_prepared(shared, wd)
    _share_reference_evals(shared, wd)
    c = run_config(config, method, ablation, seed)
    res = method_lib.run(c, wd)
    _share_reference_evals(wd, shared)
    cli.write_json(out, res)
    results[(seed, method, ablation)] = res
    done_n += 1
    rate = (time.time() - t_runs) / done_n
    log(f"[tables] {i + 1}/{len(todo)} done (seed {seed}, {tag(method, ablation)}); "
         f"{rate:.0f} s per run, ETA {rate * (len(todo) - i - 1) / 60:.1f} min")
  tables = aggregate(results, seeds, runs)
  tables["claims"] = claims(results, seeds)
  if against:
    tables["against"] = against_workdir(results, against, seeds, runs)
  tables["wall_s"] = round(time.time() - t0, 1)
  curves = {}  # run → one list of RL metric rows per seed
  for m, a in runs:
    files = [loop.metrics_file(seed_dir(workdir, s),
                               method_lib.rl_name(run_config(config, m, a, s))) for s in seeds]
    series = [cli.read_jsonl(f) for f in files if os.path.isfile(f)]
    if series:
      curves[tag(m, a)] = series
  tables["rl"] = rl_first_last(curves)
  write(workdir, tables, curves)
  return tables


def _share_reference_evals(src, dst):
  """The teacher's and base student's test evaluations do not depend on the training seed:
  computed once, copied to every seed's workdir."""
  for f in ("test_teacher.json", "test_student_base.json"):
    a, b = os.path.join(src, "eval", f), os.path.join(dst, "eval", f)
    if os.path.isfile(a) and not os.path.isfile(b):
      os.makedirs(os.path.dirname(b), exist_ok=True)
      shutil.copy(a, b)


def _ms(xs):
  xs = [x for x in xs if x is not None]
  if not xs:
    return None
  return {"mean": float(np.mean(xs)), "std": float(np.std(xs)), "n": len(xs)}


def _em(figures: dict, key: str):
  """EM of an evaluation (`eval.evaluate` figures): overall ("em") or of one family."""
  return figures.get("em") if key == "em" else figures.get("em_by_family", {}).get(key)


def aggregate(results: dict, seeds, runs) -> dict:
  """Mean ± std over seeds of each run's final-student test EM (per family + "em") and
  ARCap; the teacher and base student once (they do not depend on the training seed)."""
  rows = {}
  for m, a in runs:
    per_seed = [results[(s, m, a)]["test"]["student_final"] for s in seeds
                if (s, m, a) in results]
    row = {f: _ms([_em(r, f) for r in per_seed]) for f in FAMILIES + ("em",)}
    row["arcap"] = {k: _ms([r.get("arcap", {}).get(k) for r in per_seed]) for k in ARCAP_KEYS}
    rows[tag(m, a)] = row
  first = next(iter(results.values()), None)
  ref = {}
  if first is not None:
    for label in ("teacher", "student_base"):
      r = first["test"].get(label)
      if r:
        ref[label] = {f: _ms([_em(r, f)]) for f in FAMILIES + ("em",)}
        ref[label]["arcap"] = {k: _ms([r.get("arcap", {}).get(k)]) for k in ARCAP_KEYS}
  return {"seeds": list(seeds), "runs": rows, "reference": ref}


def _per_question(r: dict):
  """A run result's final-student EM per test question (None if it kept none)."""
  return r["test"]["student_final"].get("em_per_question")


def claims(results: dict, seeds) -> list:
  """Each claim of CLAIMS whose two runs finished on every seed: the paired EM difference
  with a 95% bootstrap interval over seeds and questions, and a verdict."""
  from dgpo_jax.eval import stats
  by_tag = {(s, tag(m, a)): r for (s, m, a), r in results.items()}
  out = []
  for claim, a, b, sign in CLAIMS:
    rows = [(by_tag.get((s, a)), by_tag.get((s, b))) for s in seeds]
    if any(x is None or y is None for x, y in rows):
      continue
    per_q = _per_question
    if any(per_q(x) is None or per_q(y) is None for x, y in rows):
      continue
    d, lo, hi = stats.paired_diff_ci([per_q(x) for x, _ in rows], [per_q(y) for _, y in rows])
    out.append({"claim": claim, "a": a, "b": b, "diff": d, "ci95": [lo, hi],
                "verdict": stats.verdict(lo, hi, sign)})
  return out


def against_workdir(results: dict, other: str, seeds, runs) -> dict:
  """How each run's final-student test EM here differs from another tables run's (the same
  world, seeds and test questions; other budgets): the paired difference here − there with a
  95% bootstrap interval over seeds and questions, and each claim's verdict on both sides.
  Runs that did not finish on every seed on both sides are left out."""
  theirs = {}
  for s in seeds:
    for m, a in runs:
      f = result_file(other, s, m, a)
      if os.path.isfile(f):
        try:
          with open(f) as fh:
            theirs[(s, m, a)] = json.load(fh)
        except (OSError, ValueError) as e:
          fail(f"--against: {f} is not a readable run result ({e})")
  if not theirs:
    first = result_file(other, seeds[0], *runs[0])
    fail(f"--against={other}: no finished run there (expected {first} and the like)")
  from dgpo_jax.eval import stats
  per_q = _per_question
  rows = {}
  for m, a in runs:
    pairs = [(results.get((s, m, a)), theirs.get((s, m, a))) for s in seeds]
    if any(x is None or y is None or per_q(x) is None or per_q(y) is None for x, y in pairs):
      continue
    for s, (x, y) in zip(seeds, pairs):
      if len(per_q(x)) != len(per_q(y)):
        fail(f"--against={other}: {tag(m, a)} (seed {s}) was tested on {len(per_q(y))} "
             f"questions there and {len(per_q(x))} here: not the same test set")
    d, lo, hi = stats.paired_diff_ci([per_q(x) for x, _ in pairs], [per_q(y) for _, y in pairs])
    rows[tag(m, a)] = {"here": float(np.mean([np.mean(per_q(x)) for x, _ in pairs])),
                       "there": float(np.mean([np.mean(per_q(y)) for _, y in pairs])),
                       "diff": d, "ci95": [lo, hi]}
  there = {c["claim"]: c for c in claims(theirs, seeds)}
  verdicts = [{"claim": c["claim"], "here": [c["diff"], c["verdict"]],
               "there": [there[c["claim"]]["diff"], there[c["claim"]]["verdict"]]}
              for c in claims(results, seeds) if c["claim"] in there]
  return {"workdir": os.path.abspath(other), "runs": rows, "claims": verdicts}


def against_markdown(ag: dict) -> str:
  """The `against_workdir` comparison as markdown sections."""
  s = (f"\n### Against {ag['workdir']} (same seeds and test questions; paired EM "
       f"difference here − there, 95% bootstrap CI over seeds and questions)\n\n"
       "| run | EM here | EM there | here − there | 95% CI |\n" + "|---" * 5 + "|\n")
  for n, r in ag["runs"].items():
    s += (f"| {n} | {r['here']:.3f} | {r['there']:.3f} | {r['diff']:+.3f} | "
          f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] |\n")
  if ag["claims"]:
    s += ("\n| claim | a − b here | verdict here | a − b there | verdict there |\n"
          + "|---" * 5 + "|\n")
    for c in ag["claims"]:
      s += (f"| {c['claim']} | {c['here'][0]:+.3f} | {c['here'][1]} | {c['there'][0]:+.3f} | "
            f"{c['there'][1]} |\n")
  return s


def cell_text(v, bold=False):
  """A mean ± std record (`_ms`) as table text; "-" when missing."""
  if v is None:
    return "-"
  s = f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if v["n"] > 1 else "")
  return f"**{s}**" if bold else s


def markdown(tables: dict) -> str:
  head = "| model | " + " | ".join(FAMILIES) + " | EM |\n" + "|---" * (len(FAMILIES) + 2) + "|\n"

  def em_rows(names, src):
    return "".join(f"| {n} | " + " | ".join(cell_text(src[n][f]) for f in FAMILIES)
                   + f" | {cell_text(src[n]['em'], True)} |\n" for n in names if n in src)

  main = [tag(m, a) for m, a in MAIN]
  abl = ["dgpo"] + [tag(m, a) for m, a in ABLATIONS]
  s = f"Seeds: {', '.join(map(str, tables['seeds']))}. Test EM of the final student (greedy).\n\n"
  s += "### Main table\n\n" + head + em_rows(["teacher", "student_base"], tables["reference"])
  s += em_rows(main, tables["runs"])
  s += "\n### Ablations (of dgpo)\n\n" + head + em_rows(abl, tables["runs"])
  s += ("\n### ARCap (docs/arcap.md)\n\n| model | Thinking EM | hit ratio first | hit ratio all |"
        " searches/q | EM when gold retrieved | answer in retrieved |\n" + "|---" * 7 + "|\n")
  for src, names in ((tables["reference"], ["teacher", "student_base"]),
                     (tables["runs"], main + abl[1:])):
    for n in names:
      if n in src:
        s += f"| {n} | " + " | ".join(cell_text(src[n]["arcap"][k]) for k in ARCAP_KEYS) + " |\n"
  if tables.get("claims"):
    s += ("\n### The paper's claims (paired EM difference a − b, 95% bootstrap CI over seeds "
          "and questions)\n\n| claim | a | b | a − b | 95% CI | verdict |\n" + "|---" * 6 + "|\n")
    for c in tables["claims"]:
      s += (f"| {c['claim']} | {c['a']} | {c['b']} | {c['diff']:+.3f} | "
            f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | {c['verdict']} |\n")
  if tables.get("rl"):
    s += ("\n### RL, first → last step (mean over seeds)\n\n| run | " + " | ".join(RL_KEYS)
          + " |\n" + "|---" * (len(RL_KEYS) + 1) + "|\n")
    for n, r in tables["rl"].items():
      s += f"| {n} | " + " | ".join(f"{r[k][0]:.3f} → {r[k][1]:.3f}" for k in RL_KEYS) + " |\n"
    changes = {n: r["em_change"] for n, r in tables["rl"].items() if "em_change" in r}
    if changes:
      s += ("\nTraining-rollout EM, first vs last 10% of RL steps (mean over seeds; 95% CI "
            "bootstrapped over steps):\n\n| run | first | last | change | 95% CI |\n"
            + "|---" * 5 + "|\n")
      for n, c in changes.items():
        s += (f"| {n} | {c['first']:.3f} | {c['last']:.3f} | {c['change']:+.3f} | "
              f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] |\n")
  if tables.get("against"):
    s += against_markdown(tables["against"])
  return s


RL_KEYS = ("kl", "token_reward_sum", "entropy", "searches_per_question", "answered")


def _mean_at(series, key, step):
  """Mean over seeds of `key` at `step` (NaN where no seed logged it)."""
  v = [r[key] for s in series for r in s if r["step"] == step and key in r]
  return float(np.mean(v)) if v else float("nan")


def rl_first_last(curves: dict) -> dict:
  """{run: {key: [first-step mean, last-step mean]}} over seeds, for RL_KEYS."""
  out = {}
  for name, series in curves.items():
    steps = sorted({r["step"] for s in series for r in s})
    out[name] = {k: [_mean_at(series, k, steps[0]), _mean_at(series, k, steps[-1])]
                 for k in RL_KEYS}
    ems = [_mean_at(series, "em", s) for s in steps]
    # rows behind each step's mean: every seed's rollout rows at that step
    n = [sum(r.get("rows", 0) for sr in series for r in sr if r["step"] == s) for s in steps]
    keep = [i for i, e in enumerate(ems) if e == e]
    if len(keep) >= 2:  # training-rollout EM, first vs last 10% of steps (mean over seeds)
      from dgpo_jax.eval import stats
      n = [int(n[i]) for i in keep]
      out[name]["em_change"] = stats.first_last_change([ems[i] for i in keep],
                                                       rows=n if all(n) else None)
  return out


def pyplot(product: str):
  """matplotlib.pyplot on the Agg backend, or None (logged: `product` is not drawn) when
  matplotlib is not installed."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    log(f"matplotlib is not installed: no {product} (pip install matplotlib)")
    return None
  return plt


def plot_curves(curves: dict, path: str) -> bool:
  """EM, reward, KL and entropy vs RL step (mean over seeds), one line per RL run.

  curves: {run: [rows of one seed's metrics_rl-*.jsonl, ...]}."""
  plt = pyplot("curves.png")
  if plt is None:
    return False
  fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4))
  draw_curves(axes, curves)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def draw_curves(axes, curves: dict):
  """One panel per CURVES key on `axes`, one line per run (mean over seeds)."""
  for i, (name, series) in enumerate(curves.items()):
    steps = sorted({r["step"] for s in series for r in s})
    # one color and style per run in every panel: a run a panel skips (GKD has no reward
    # or KL-to-reference) must not shift the others' colors there
    style = dict(color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3], label=name)
    for ax, (key, title) in zip(axes, CURVES):
      ys = [_mean_at(series, key, st) for st in steps]
      if not np.all(np.isnan(ys)):
        ax.plot(steps, ys, **style)
      ax.set_title(title)
      ax.set_xlabel("RL step")
  axes[0].legend(fontsize=7)


def write_products(workdir: str, stem: str, obj: dict, md: str, plot: Callable[[], bool]):
  """`<stem>.json`, `<stem>.md` (with the invocation's wall time, `obj["wall_s"]`) and the
  plot `plot()` draws, in `workdir`; the markdown also goes to the log."""
  cli.write_json(os.path.join(workdir, f"{stem}.json"), obj)
  with open(os.path.join(workdir, f"{stem}.md"), "w") as f:
    f.write(md + f"\nWall time of this invocation (finished runs are read back, not redone): "
            f"{obj['wall_s'] / 60:.1f} min.\n")
  plot()
  log(md)


def write(workdir, tables, curves):
  write_products(workdir, "tables", tables, markdown(tables),
                 lambda: plot_curves(curves, os.path.join(workdir, "curves.png")))
