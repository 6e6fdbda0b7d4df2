"""`report.md` for a training run: config, data, results tables, KD validation history and
sample trajectories (one correct, one wrong) rendered readably."""

import json
import os

from dgpo_jax.eval import stats
from dgpo_jax.eval.metrics import exact_match
from dgpo_jax.train import loop
from dgpo_jax.utils import cli

FAMILIES = ("single_hop", "bridge", "comparison", "three_hop")


def render_trajectory(t, tok) -> str:
  """A trajectory as text: each generated turn and observation, marked."""
  lines = [f"Q: {t.question}"]
  for turn in t.turns:
    text = tok.decode(t.response_ids[turn["start"]:turn["end"]]).strip()
    if turn["kind"] == "observation":
      text = text.replace("\n", " ")
      lines.append(f"  [env] {text[:400]}{' …' if len(text) > 400 else ''}")
    else:
      lines.append(f"  [model] {text}")
  lines.append(f"  answer: {t.answer!r}; searches: {t.num_searches}; flags: {t.flags or '-'}")
  return "\n".join(lines)


def sample_trajectories(trajs, questions, tok) -> dict:
  """{"correct": text | None, "wrong": text | None}: the first of each kind."""
  out = {"correct": None, "wrong": None}
  for t, q in zip(trajs, questions):
    key = "correct" if exact_match(t.answer, q["golden_answers"]) else "wrong"
    if out[key] is None:
      out[key] = render_trajectory(t, tok) + f"\n  gold: {q['golden_answers']}"
  return out


def em_table(rows: dict) -> str:
  """Markdown table: one row per model, EM per question family and the average."""
  fam = lambda r: r.get("em_by_family", {})
  fams = [f for f in FAMILIES if any(f in fam(r) for r in rows.values())]
  fams += sorted({f for r in rows.values() for f in fam(r)} - set(fams))
  head = "| model | " + " | ".join(fams) + " | EM | searches/q |\n"
  head += "|---" * (len(fams) + 3) + "|\n"
  body = ""
  for name, r in rows.items():
    cells = [f"{fam(r)[f]:.3f}" if f in fam(r) else "-" for f in fams]
    body += (f"| {name} | " + " | ".join(cells) + f" | **{r['em']:.3f}** | "
             f"{r.get('searches_per_question', float('nan')):.2f} |\n")
  return head + body


def rl_em_change(rows) -> dict | None:
  """The training-rollout EM of an RL stage's first vs last 10% of steps, from its metrics
  rows (`stats.first_last_change`, resampling the rollout rows when the metrics record them),
  with `steps` added; None with fewer than 2 steps."""
  em_rows = [r for r in rows if "em" in r]
  if len(em_rows) < 2:
    return None
  n = [r.get("rows") for r in em_rows]
  c = stats.first_last_change([r["em"] for r in em_rows],
                              rows=[int(x) for x in n] if all(n) else None)
  return {**c, "steps": len(em_rows)}


def write(workdir, config, results, history, samples):
  parts = [f"# dgpo-jax run: method `{results['method']}`"
           + (f", ablation `{results['ablation']}`" if results["ablation"] else "")
           + f", seed {results['seed']}\n",
           f"Plan: {' → '.join(results['plan'])}. Workdir: `{workdir}`.\n",
           "\n## Test EM (greedy)\n\n", em_table(results["test"])]
  probe = results.get("prepare", {}).get("probe")
  if probe:
    parts.append("\n## Base skills (teacher-forced next-token accuracy on held-out entities, "
                 "`eval/probe.py`)\n\n| model | copy | copy, whole list | reading | "
                 "reading, whole answer |\n|---|---|---|---|---|\n" + "".join(
                     f"| {k} | {v['copy']:.3f} | {v['copy_exact']:.3f} | {v['reading']:.3f} | "
                     f"{v['reading_exact']:.3f} |\n" for k, v in probe.items()))
  if history.get("kd"):
    parts.append("\n## KD validation (dev EM per epoch)\n\n")
    parts.append("| epoch | step | EM | loss |\n|---|---|---|---|\n" + "".join(
        f"| {h['epoch']} | {h['step']} | {h['em']:.3f} | {h.get('loss', float('nan')):.4f} |\n"
        for h in history["kd"]))
  rl_name = results.get("stages", {}).get("rl")
  rl_metrics = loop.metrics_file(workdir, rl_name)
  if rl_name and os.path.isfile(rl_metrics):
    rows = cli.read_jsonl(rl_metrics)
    parts.append("\n## RL (first and last steps)\n\n")
    keys = [k for k in ("em", "kl", "entropy", "clip_frac", "vf_loss", "explained_var",
                        "searches_per_question", "response_tokens", "tokens_per_s")
            if k in rows[-1]]
    parts.append("| step | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 1) + "|\n")
    for r in (rows[:1] + rows[-1:]) if len(rows) > 1 else rows:
      parts.append(f"| {r['step']} | " + " | ".join(f"{r.get(k, float('nan')):.4g}"
                                                   for k in keys) + " |\n")
    c = rl_em_change(rows)
    if c:
      over = ("the rollout rows of those steps" if c["resampled"] == "rows" else
              "the steps' EMs (the metrics do not record rows per step)")
      parts.append(f"\nTraining-rollout EM, first {c['n_each']} vs last {c['n_each']} of "
                   f"{c['steps']} steps: {c['first']:.3f} → {c['last']:.3f}, change "
                   f"{c['change']:+.3f} (95% CI [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], "
                   f"bootstrap over {over}).\n")
    val = [r for r in rows if "val_em" in r]
    if val:
      parts.append("\nRL validation EM (dev slice): " + ", ".join(
          f"step {r['step']}: {r['val_em']:.3f}" for r in val) + ".\n")
  shown = {k: v for k, v in samples.items()
           if not (k == "student_kd" and "student_final" in samples)}
  _finish(workdir, config, parts, shown)


def _finish(workdir, config, parts, samples):
  """Appends sample trajectories (one correct, one wrong per entry) and the config, and
  writes `report.md`."""
  for label, s in samples.items():
    for kind in ("correct", "wrong"):
      if s.get(kind):
        parts.append(f"\n## Sample trajectory: {label}, {kind}\n\n```\n{s[kind]}\n```\n")
  parts.append("\n## Config\n\n```json\n" + json.dumps(config.to_dict(), indent=1, default=str)
               + "\n```\n")
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("".join(p if p.endswith("\n") else p + "\n" for p in parts))


def write_eval(workdir, config, results, table, samples):
  """`report.md` for an evaluate run: checkpoint, data, tables, sample trajectories."""
  parts = [f"# dgpo-jax evaluation of `{results['checkpoint']}`\n",
           f"Datasets: {', '.join(results['datasets'])}. Greedy decoding. Wall time "
           f"{results['wall_s']} s. Workdir: `{workdir}`.\n", "\n## Results\n\n", table]
  _finish(workdir, config, parts, samples)
