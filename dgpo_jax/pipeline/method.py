"""Stage "train": preparation → the method's stages (`pipeline.stages`: TGO, KD, RL, GKD)
→ test evaluation → results.

`config.method` (plus `config.ablation`) picks the stages; every method is the same few
typed stages with different fields, not a copy of the trainer (the table of methods and
ablations is in `pipeline/stages.py`).

Products: `tgo/`, `checkpoints/{kd,rl}`, `eval/*.json`, `results.json`, `report.md`.
Every stage resumes from what the workdir holds.
"""

import dataclasses
import functools
import hashlib
import json
import os

import jax
import numpy as np

from dgpo_jax.data import lm_data, qa
from dgpo_jax.eval import evaluate as evaluation
from dgpo_jax.eval import probe
from dgpo_jax.models.sampler import SamplingParams
from dgpo_jax.parallel import sharding
from dgpo_jax.pipeline import prepare, report, rl_stage, stages, steps
from dgpo_jax.pipeline.rl_stage import run_rl
from dgpo_jax.rl import batch as rl_batch
from dgpo_jax.rl import distill
from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine
from dgpo_jax.train.loop import fit
from dgpo_jax.train.step import Model
from dgpo_jax.utils import cli, shapes
from dgpo_jax.utils.errors import fail
from dgpo_jax.utils.progress import log


def check_batches(config, mesh):
  """Every batch the run will shard must divide over the data-parallel devices."""
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  p = config.ppo
  rl = stages.on_policy(stages.plan(config))
  rows = rl_stage.rollout_rows(config, rl) if rl else p.questions_per_step
  if p.mini_batch % max(p.micro_batches, 1):
    fail(f"ppo.mini_batch={p.mini_batch} does not split into micro_batches={p.micro_batches}")
  sizes = {"kd.batch_size": config.kd.batch_size,
           "ppo.questions_per_step×group": rows,
           "ppo.mini_batch": p.mini_batch,
           "ppo.mini_batch/micro_batches": p.mini_batch // max(p.micro_batches, 1)}
  if "prep" in config:
    sizes["prep.batch_size"] = config.prep.batch_size
  for name, n in sizes.items():
    if n % dp:
      fail(f"{name}={n} does not divide over the {dp} data-parallel devices of mesh "
           f"{dict(mesh.shape)} (config.mesh={config.mesh!r})")
  if rl:
    rl_stage.check_rows(p, rows)


def _write_json(path, obj):
  if jax.process_index() == 0:
    cli.write_json(path, obj, indent=2)


def seed_suffix(config) -> str:
  """What names a training seed's KD and RL stages apart from another's on the same prepared
  world: "" when the seed is the world's own (the usual single run), else "-s<seed>"."""
  return "" if config.seed == prepare.world_seed(config) else f"-s{config.seed}"


def method_tag(config) -> str:
  """`<method>[-<ablation>]`: what names a run's RL stage and final student."""
  return config.method + (f"-{config.ablation}" if config.ablation else "")


def rl_name(config) -> str:
  """The RL stage's checkpoint and metrics name (`metrics_<name>.jsonl`)."""
  return f"rl-{method_tag(config)}{seed_suffix(config)}"


def tgo_key(config) -> str:
  """What determines a TGO set (and so the KD run trained on it): its questions and
  sampling temperature."""
  n = config.tgo.num_questions
  return f"{'all' if n <= 0 else n}q-t{config.tgo.temperature:g}"


def teacher_trajectories(config, workdir, teacher: Model, tok, retriever, train_q):
  """TGO: the teacher's rollouts on training questions (`tgo.num_questions`, ≤ 0 for the
  whole training split), correct ones kept (or all, for the ablation). Cached in
  `workdir/tgo/<tgo_key>/`."""
  keep_all = stages.field(config, "tgo.keep_incorrect")
  tgo_dir = os.path.join(workdir, "tgo", tgo_key(config))
  out = os.path.join(tgo_dir, f"tgo_{'all' if keep_all else 'correct'}.npz")
  if os.path.isfile(out):
    z = np.load(out)
    return {k: z[k] for k in z.files}
  n = config.tgo.num_questions
  qs = train_q[:n] if n > 0 else train_q
  rc = RolloutConfig.from_config(config)
  engine = RolloutEngine.for_model(teacher.graphdef, teacher.params, tok, retriever, rc,
                                   [q["question"] for q in qs], margin=32)
  sp = SamplingParams(greedy=config.tgo.temperature == 0, temperature=max(
      config.tgo.temperature, 1e-6))
  # TGO belongs to the prepared world (shared by training seeds): drawn with its seed.
  trajs = evaluation.rollouts(engine, qs, config.eval.batch_size,
                     rng_seed=prepare.world_seed(config) + 31, sp=sp, label="tgo",
                     partial=os.path.join(tgo_dir, "rollouts.partial"))
  full = rl_batch.from_trajectories(trajs, [q["golden_answers"] for q in qs], tok.pad_id)
  stats = {"questions": len(qs), "correct": int((full["score"] > 0).sum()),
           **rl_batch.rollout_metrics(trajs, full["score"])}
  if all(q.get("hops") for q in qs):  # synthetic questions: which correct answers were read
    texts = [tok.decode([i for i, m in zip(t.response_ids, t.loss_mask) if m]) for t in trajs]
    stats["restated_gold_facts"] = probe.restated_gold_facts(texts, qs, full["score"])
  log(f"[tgo] {stats}")
  # One rollout serves both variants: every trajectory, and the correct ones.
  for variant, keep in (("all", np.ones(len(qs), bool)), ("correct", full["score"] > 0)):
    if keep.sum() == 0:
      continue
    arr = {k: v[keep] for k, v in full.items()}
    used = int(arr["mask"].sum(1).max())
    arr = {k: v[:, :shapes.round_up(used + 1)] if v.ndim == 2 else v for k, v in arr.items()}
    f = os.path.join(tgo_dir, f"tgo_{variant}.npz")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(f), exist_ok=True)
      np.savez(f + ".tmp.npz", **arr)
      os.replace(f + ".tmp.npz", f)
  _write_json(os.path.join(tgo_dir, "stats.json"), stats)
  if not keep_all and stats["correct"] == 0:
    fail(f"TGO: the teacher answered none of {len(qs)} training questions correctly; there is "
         f"nothing to distill. Train the teacher further (prep.sft_steps) or set "
         f"tgo.keep_incorrect=True for the ablation")
  from dgpo_jax.parallel import distributed
  distributed.barrier("tgo")  # the other processes read what process 0 wrote
  z = np.load(out)
  return {k: z[k] for k in z.files}


def distill_stage(config, workdir, name, student: Model, teacher: Model, data, loss, lam,
                  mesh, evaluate):
  """KD on trajectories for `kd.epochs` epochs; validation EM after every `kd.val_every`-th
  epoch and the last; stops early at a validated epoch whose EM reaches `kd.em_threshold`
  (the switch to stage 2). Returns (params, one history row per validated epoch)."""
  k = config.kd
  n = len(data["tokens"])
  bs = min(k.batch_size, n)
  spe = max(1, n // bs)
  built = steps.kd_update(config, student, teacher, mesh, loss, lam, spe)  # one per stage

  @functools.cache
  def rows():  # made at the first step trained: a finished stage, read back, needs no cache
    wm = config.data.width_multiple
    cached = ({"teacher_h": stored_teacher_cache(workdir, teacher, data, bs, mesh, wm)}
              if k.get("cache_teacher", False) else None)
    return lm_data.masked_batches(data["tokens"], data["mask"], data["gen"], bs,
                                  config.seed + 23, per_position=cached, multiple=wm)
  batch_fn = lambda step: dict(rows()(step), step=np.full((bs,), step, np.int32),
                               lam=np.full((bs,), lam, np.float32))

  check_schedule(workdir, name, {"epochs": k.epochs, "steps_per_epoch": spe, "batch_size": bs})
  val_f = os.path.join(workdir, "eval", f"{name}_val.json")
  history = evaluation.read_history(val_f)
  params = student.params
  for epoch in range(1, k.epochs + 1):
    fc = steps.kd_fit_config(config, spe, epoch)
    params, m = fit(name, workdir, Model(student.cfg, student.graphdef, params,
                                         student.shardings), mesh, batch_fn, fc, config.seed,
                    log, frozen=teacher, built=built)
    if epoch % k.val_every and epoch < k.epochs:  # checked ≥ 1 by stages.plan
      continue  # validation costs a rollout of the dev slice: not after every epoch
    row = next((h for h in history if h["epoch"] == epoch), None)
    if row is None:
      row = {"epoch": epoch, "step": fc.steps, **evaluation.headline(evaluate(params)), **m}
      history.append(row)
      _write_json(val_f, history)
      log(f"[{name}] epoch {epoch}/{k.epochs}: val EM {row['em']:.3f}")
    if k.em_threshold > 0 and row["em"] >= k.em_threshold:
      log(f"[{name}] val EM {row['em']:.3f} ≥ kd.em_threshold "
           f"{k.em_threshold}: switching to the next stage")
      break
  return params, history


def check_schedule(workdir, name, schedule: dict):
  """A KD stage's name says what it distils, not for how long: a workdir whose stage of that
  name was trained on another schedule (the tables at 10 KD epochs, then a run at 20) would
  resume or read it back under the wrong one. Keeps the schedule beside the checkpoints and
  stops on a different one."""
  f = os.path.join(workdir, "checkpoints", f"{name}.schedule.json")
  if os.path.isfile(f):
    try:
      with open(f) as fh:
        kept = json.load(fh)
    except (OSError, ValueError) as e:
      fail(f"{f}: unreadable ({e}); it records KD stage {name}'s schedule: restore it, or "
           f"remove it with checkpoints/{name} to train the stage again")
    if kept != schedule:
      fail(f"{f}: KD stage {name} was trained with {kept} in this workdir; this config asks "
           f"{schedule}. Use another workdir, or remove checkpoints/{name} and that file "
           f"to train it again.")
  else:
    _write_json(f, schedule)


def teacher_cache(teacher: Model, data, rows: int, mesh, multiple: int = 64) -> np.ndarray:
  """The teacher's final hidden states at every trajectory's loss positions, [N, K, D]
  float32 in `lm_data.loss_positions` order: one forward of the frozen teacher over the set
  instead of one per KD step (`kd.cache_teacher`; N·K·D floats of host memory). Rows go in
  length order, `rows` at a time, at the widths `masked_batches` cuts them to."""
  tokens, mask, gen = data["tokens"], data["mask"], data["gen"]
  lengths = mask.sum(1)
  caps = lm_data.loss_caps(lengths, gen, multiple)
  out = np.zeros((len(tokens), max(caps.values()), teacher.cfg.d_model), np.float32)
  fn = jax.jit(lambda p, t, v, i: distill.teacher_states(teacher.graphdef, p, t, v, i),
               out_shardings=sharding.replicated(mesh))  # every process reads it whole
  order = np.argsort(lengths, kind="stable")
  for s in range(0, len(order), rows):
    ids = order[s:s + rows]
    ids = np.concatenate([ids, np.repeat(ids[-1:], rows - len(ids))])  # one shape per width
    w = min(c for c in caps if c >= lengths[ids].max())  # the width masked_batches cuts to
    k = caps[w]
    h = fn(teacher.params, tokens[ids, :w - 1], mask[ids, :w - 1],
           lm_data.loss_positions(gen[ids, :w], k))
    out[ids, :k] = np.asarray(h)
  log(f"[kd] teacher states cached: {out.shape} ({out.nbytes / 2**20:.0f} MiB)")
  return out


def stored_teacher_cache(workdir, teacher: Model, data, rows: int, mesh,
                         multiple: int = 64) -> np.ndarray:
  """`teacher_cache`, kept in `workdir/tgo/teacher_states/` under a digest of everything it
  is computed from (the trajectories, the teacher's params and config, rows, multiple), so
  another method or seed on the same TGO set reads it instead of running the teacher again.
  A multi-process run computes it each time (its params are not all on one host)."""
  if jax.process_count() > 1:
    return teacher_cache(teacher, data, rows, mesh, multiple)
  h = hashlib.sha256(repr((teacher.cfg, rows, multiple)).encode())
  for a in [data["tokens"], data["mask"], data["gen"],
            *jax.tree.leaves(jax.device_get(teacher.params))]:
    a = np.ascontiguousarray(a)
    h.update(repr((a.shape, str(a.dtype))).encode())
    h.update(a.tobytes())
  f = os.path.join(workdir, "tgo", "teacher_states", h.hexdigest()[:24] + ".npy")
  if os.path.isfile(f):
    try:
      out = np.load(f)
      log(f"[kd] teacher states read from {f}")
      return out
    except (OSError, ValueError) as e:  # a damaged file is made again, not trusted
      log(f"[kd] {f} unreadable ({e}); computing the teacher states again")
  out = teacher_cache(teacher, data, rows, mesh, multiple)
  os.makedirs(os.path.dirname(f), exist_ok=True)
  np.save(f + ".tmp.npy", out)
  os.replace(f + ".tmp.npy", f)
  return out


@dataclasses.dataclass
class Environment:
  """What a run acts in, resolved once from the config: the tokenizer, the search tool, the
  question splits, the corpus the gold passage ids refer to, and what a trained student is
  exported with (`hf_io.export_hf` keywords)."""
  tok: object
  retriever: object
  train_q: list
  dev_q: list
  test_q: list
  corpus: str
  export_with: dict


def _synthetic_env(config, workdir, tok, retriever) -> Environment:
  d = os.path.join(workdir, "world")
  train_q, dev_q, test_q = (cli.read_jsonl(os.path.join(d, f"{s}.jsonl"))
                            for s in ("train", "dev", "test"))
  return Environment(tok, retriever, train_q, dev_q, test_q, os.path.join(d, "corpus.jsonl"),
                     {"extra_files": {"tokenizer.model": tok.path}})


def _pretrained(config, workdir, with_teacher):
  """(prep, student, teacher, environment) of a run on pretrained checkpoints."""
  from dgpo_jax.models import registry
  fields = ("data.train", "data.dev", "data.test") + (
      ("teacher_model.name",) if with_teacher else ())
  for field in fields:
    sec, name = field.split(".")
    if not config[sec][name]:
      fail(f"config.{field} is empty: pretrained-model training needs it")
  student, mesh = prepare.setup.build_model(config, workdir)
  teacher = None
  if with_teacher:
    t = config.teacher_model
    teacher = prepare.setup.load_pretrained(t.name, t.param_dtype, t.dtype, mesh,
                                            prepare.setup.rules(config), config.model.remat)
  files = [qa.read_qa(config.data[s]) for s in ("train", "dev", "test")]
  prep = {"skipped_no_answer": {f.name: f.skipped_no_answer for f in files}}
  env = Environment(student.tokenizer, prepare.setup.build_retriever(config),
                    *(f.rows for f in files), config.data.corpus,
                    {"tokenizer_dir": registry.resolve(config.model.name)})
  return prep, student, teacher, env


def setup_run(config, workdir, with_teacher=True):
  """(prep results, student, teacher, Environment).

  The synthetic world (a config with a `world` section) comes from `prepare`; otherwise the
  student (`model`) and teacher (`teacher_model`) are pretrained checkpoints and the questions
  come from `data.train/dev/test`. The only place that tells the two apart.
  """
  if "world" in config:
    prep, models, tok, retriever = prepare.run(config, workdir)
    student, teacher = models["student"], models["teacher"]
    env = _synthetic_env(config, workdir, tok, retriever)
  else:
    prep, student, teacher, env = _pretrained(config, workdir, with_teacher)
  if teacher is not None and not (env.tok.vocab_size <= student.cfg.vocab_size
                                  <= teacher.cfg.vocab_size):
    fail(f"tokenizer ({env.tok.vocab_size}), student ({student.cfg.vocab_size}) and teacher "
         f"({teacher.cfg.vocab_size}) vocabularies: distillation needs one tokenizer whose ids "
         f"both heads cover (a teacher head may only be padded larger)")
  return prep, student, teacher, env


def export_student(workdir, name, student: Model, params, env: Environment):
  """An HF-format copy of a trained student in `workdir/models/<name>` (with its tokenizer),
  loadable by `ask --model`, `generate` and transformers."""
  out = os.path.join(workdir, "models", name)
  if os.path.isdir(out):
    return out
  from dgpo_jax.models import hf_io
  from dgpo_jax.parallel import distributed
  host = distributed.to_host(params)
  if jax.process_index() == 0:
    kw = dict(env.export_with)
    if "extra_files" in kw:
      kw["extra_files"] = {k: open(v, "rb").read() for k, v in kw["extra_files"].items()}
    hf_io.export_hf(out, student.cfg, host, **kw)
  return out


def kd_name(config, stage: stages.KD, rl_before: str = "") -> str:
  """A KD stage's checkpoint name: what determines it, so methods that share a KD stage
  (dgpo, kd, the ablations after KD) share its checkpoint within a workdir."""
  keep = "all" if stages.field(config, "tgo.keep_incorrect") else "correct"
  name = f"kd-{stage.loss}-lam{stage.lam:g}-{keep}-{tgo_key(config)}"
  return name + (f"-after-{rl_before}" if rl_before else seed_suffix(config))


def stage_names(config, plan) -> dict:
  """{"kd"/"rl": checkpoint name} of `plan`'s trained stages, as `_run_stages` names them (a
  KD stage after an RL stage is named after it)."""
  names = {}
  for stage in plan:
    if isinstance(stage, stages.KD):
      names["kd"] = kd_name(config, stage, names.get("rl", ""))
    elif not isinstance(stage, stages.TGO):
      names["rl"] = rl_name(config)
  return names


def _run_stages(config, workdir, plan, student: Model, teacher, env: Environment, mesh,
                evaluator):
  """Runs the stages in order. Returns ({"kd"/"rl": trained params}, KD validation
  history, {"kd"/"rl": stage name}, the final params)."""
  tok, retriever, train_q = env.tok, env.retriever, env.train_q
  dev_q = env.dev_q[:config.eval.val_questions]
  rules = prepare.setup.rules(config)
  current, checkpoints, history, data = student.params, {}, {}, None
  names = stage_names(config, plan)
  for stage in plan:
    cur = Model(student.cfg, student.graphdef, current, student.shardings)
    if isinstance(stage, stages.TGO):
      data = teacher_trajectories(config, workdir, teacher, tok, retriever, train_q)
    elif isinstance(stage, stages.KD):
      current, history["kd"] = distill_stage(config, workdir, names["kd"], cur, teacher, data,
                                             stage.loss, stage.lam, mesh,
                                             evaluator(student, dev_q))
      checkpoints["kd"] = current
    else:  # RL or GKD
      current, _ = run_rl(names["rl"], config, workdir, cur,
                          teacher if stage.kl_to_teacher else cur,
                          (tok, retriever, RolloutConfig.from_config(config)), train_q, mesh,
                          rules, log, mode=stage.mode,
                          # not preemptible: the RL step it belongs to is not saved yet
                          evaluate=evaluator(student, dev_q[:config.eval.rl_val_questions],
                                             preemptible=False),
                          **stage.ppo_overrides())
      checkpoints["rl"] = current
  return checkpoints, history, names, current


def _test_row(config, label, f, m: Model, params, env: Environment, test_q, passages):
  """One model's test evaluation (cached in `f`): summary, per-question EM, ARCap, and
  sample trajectories."""
  if os.path.isfile(f):
    row = json.load(open(f))
    if "em" in row:  # (an evaluation kept before the one schema is redone)
      return row
  figures, trajs = prepare.evaluate(
      dataclasses.replace(m, params=params, tokenizer=env.tok), env.retriever, config, test_q,
      passages=passages() if config.eval.arcap_thinking else None,
      partial=f[:-len(".json")] + ".partial")
  row = dict(figures, samples=report.sample_trajectories(trajs, test_q, env.tok))
  _write_json(f, row)
  log(f"[eval] {label} test EM: {evaluation.headline(figures)}")
  return row


def run(config, workdir):
  """Runs the configured method end to end; returns the results dict."""
  plan_ = stages.plan(config)  # validates before any expensive work
  mesh = sharding.make_mesh(config.mesh)
  check_batches(config, mesh)
  prep, student, teacher, env = setup_run(config, workdir,
                                         with_teacher=stages.needs_teacher(plan_))
  test_q = env.test_q[:config.eval.num_questions]

  def evaluator(m: Model, qs, preemptible=True):
    return lambda p: prepare.evaluate(dataclasses.replace(m, params=p, tokenizer=env.tok),
                                      env.retriever, config, qs, preemptible=preemptible,
                                      label="validate")[0]

  checkpoints, history, names, current = _run_stages(config, workdir, plan_, student, teacher,
                                                     env, mesh, evaluator)
  tag, last_is_kd = method_tag(config), isinstance(plan_[-1], stages.KD)
  results = {"method": config.method, "ablation": config.ablation, "seed": config.seed,
             "plan": [st.kind for st in plan_], "stages": names, "prepare": prep, "test": {}}
  evals = [("student_base", "student_base", student.params)]
  if teacher is not None:
    evals.append(("teacher", "teacher", teacher.params))
  if "kd" in checkpoints:
    evals.append(("student_kd", f"student_{names['kd']}", checkpoints["kd"]))
  if not last_is_kd:
    evals.append(("student_final", f"student_final-{tag}{seed_suffix(config)}", current))
  for label, file_label, p in evals:
    if label in ("student_kd", "student_final"):  # the trained students
      export_student(workdir, file_label, student, p, env)
  cache = {}

  def passages():  # gold passages for ARCap Thinking: read once, only if an eval needs them
    if "p" not in cache:
      cache["p"] = evaluation.read_passages(env.corpus, {i for q in test_q
                                                         for i in (q.get("gold_ids") or [])})
    return cache["p"]

  samples = {}
  for label, file_label, p in evals:
    m = teacher if label == "teacher" else student
    row = _test_row(config, label, os.path.join(workdir, "eval", f"test_{file_label}.json"),
                    m, p, env, test_q, passages)
    samples[label] = row.pop("samples", {})
    results["test"][label] = row
  if last_is_kd:
    results["test"]["student_final"] = results["test"]["student_kd"]
  _write_json(os.path.join(workdir, "results.json"), results)
  if jax.process_index() == 0:
    report.write(workdir, config, results, history, samples)
  return results
