"""Stage "train": preparation → [TGO → KD] → [on-policy RL] → test evaluation → results.

`config.method` (plus `config.ablation`) picks the plan; every piece is a config switch over
the same stages, not a copy of the trainer:

  dgpo      TGO (correct only) → KD (CE + λ·KL) → PPO, reward −β·KL(π_θ‖π_teacher) on wrong rows
  ppo       PPO from the base student, reference-model KL on every row (Search-R1)
  sft_ppo   TGO → SFT (CE only) → PPO with reference KL
  kd        TGO → KD (CE + λ·KL), no RL (Hinton)
  distillm  TGO → skew forward KL;   taid: TGO → TAID;   gkd: on-policy JSD on student samples
  grpo      group-normalized outcome advantages, no critic, reference KL

Ablations (of dgpo): no_cold_start (no KD), uniform_kl (teacher KL on every row),
no_teacher_guidance (plain PPO after KD: no teacher KL), inverted (PPO first, then KD),
kd_with_incorrect_tgo (KD also on the teacher's wrong trajectories).

Products: `tgo/`, `checkpoints/{kd,rl}`, `eval/*.json`, `results.json`, `report.md`.
Every stage resumes from what the workdir holds.
"""

import json
import os

import jax
import numpy as np

from dgpo_jax.data import lm_data, qa
from dgpo_jax.eval import arcap
from dgpo_jax.eval import evaluate as E
from dgpo_jax.eval import probe
from dgpo_jax.eval.metrics import exact_match
from dgpo_jax.models.sampler import SamplingParams
from dgpo_jax.parallel import sharding
from dgpo_jax.pipeline import prepare, report
from dgpo_jax.pipeline.rl_stage import Model, run_rl
from dgpo_jax.rl import batch as B
from dgpo_jax.rl import distill
from dgpo_jax.rollout.engine import RolloutConfig, RolloutEngine
from dgpo_jax.train.loop import FitConfig, fit
from dgpo_jax.utils import cli
from dgpo_jax.utils.errors import fail

METHODS = ("dgpo", "ppo", "sft_ppo", "kd", "distillm", "taid", "gkd", "grpo")
ABLATIONS = ("", "no_cold_start", "uniform_kl", "no_teacher_guidance", "inverted",
             "kd_with_incorrect_tgo")
KD_LOSS = {"dgpo": "ce_fkl", "sft_ppo": "ce_fkl", "kd": "ce_fkl", "distillm": "skew_fkl",
           "taid": "taid"}


def plan(config) -> list:
  """The method's stages as [(kind, options)], validated before any work starts."""
  m, a = config.method, config.ablation
  if m not in METHODS:
    fail(f"config.method={m!r}: expected one of {', '.join(METHODS)}")
  if a not in ABLATIONS:
    fail(f"config.ablation={a!r}: expected one of {', '.join(x for x in ABLATIONS if x)}")
  if a and m != "dgpo":
    fail(f"config.ablation={a!r} is an ablation of dgpo; config.method is {m!r}")
  if config.kd.lam < 0 or config.ppo.beta < 0 or config.ppo.kl_loss_coef < 0:
    fail("kd.lam, ppo.beta and ppo.kl_loss_coef must be ≥ 0")
  if config.ppo.grpo_kl not in ("loss", "reward"):
    fail(f"config.ppo.grpo_kl={config.ppo.grpo_kl!r}: expected loss or reward")
  lam = 0.0 if m == "sft_ppo" else config.kd.lam
  kd = ("kd", dict(loss=KD_LOSS.get(m, "ce_fkl"), lam=lam))
  teacher_rl = ("rl", dict(kl_target="teacher", kl_rows=config.ppo.kl_rows))
  ref_rl = ("rl", dict(kl_target="reference", kl_rows="all"))
  if m == "dgpo":
    if a == "no_cold_start":
      return [teacher_rl]
    if a == "uniform_kl":
      return [("tgo", {}), kd, ("rl", dict(kl_target="teacher", kl_rows="all"))]
    if a == "no_teacher_guidance":
      return [("tgo", {}), kd, ("rl", dict(kl_target="teacher", kl_rows="none"))]
    if a == "inverted":
      return [ref_rl, ("tgo", {}), kd]
    return [("tgo", {}), kd, teacher_rl]
  if m in ("kd", "distillm", "taid"):
    return [("tgo", {}), kd]
  if m == "sft_ppo":
    return [("tgo", {}), kd, ref_rl]
  if m == "ppo":
    return [ref_rl]
  if m == "grpo":
    if config.ppo.grpo_kl == "loss":  # the reference's use_kl_loss: no KL in the reward
      return [("rl", dict(kl_target="reference", kl_rows="none", advantage="grpo",
                          kl_loss_coef=config.ppo.kl_loss_coef))]
    return [("rl", dict(kl_target="reference", kl_rows="all", advantage="grpo"))]
  return [("gkd", {})]


def check_batches(config, mesh):
  """Every batch the run will shard must divide over the data-parallel devices."""
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  p = config.ppo
  group = p.group_size if config.method == "grpo" else 1
  if p.mini_batch % max(p.micro_batches, 1):
    fail(f"ppo.mini_batch={p.mini_batch} does not split into micro_batches={p.micro_batches}")
  sizes = {"kd.batch_size": config.kd.batch_size,
           "ppo.questions_per_step×group": p.questions_per_step * group,
           "ppo.mini_batch": p.mini_batch,
           "ppo.mini_batch/micro_batches": p.mini_batch // max(p.micro_batches, 1)}
  if "prep" in config:
    sizes["prep.batch_size"] = config.prep.batch_size
  for name, n in sizes.items():
    if n % dp:
      fail(f"{name}={n} does not divide over the {dp} data-parallel devices of mesh "
           f"{dict(mesh.shape)} (config.mesh={config.mesh!r})")
  if any(k in ("rl", "gkd") for k, _ in plan(config)) and (p.questions_per_step * group) % (
      p.mini_batch):
    fail(f"ppo: questions_per_step × group size ({p.questions_per_step * group}) must divide "
         f"into mini_batch ({p.mini_batch})")


def _log(msg):
  if jax.process_index() == 0:
    print(msg, flush=True)


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
  keep_all = config.tgo.keep_incorrect or config.ablation == "kd_with_incorrect_tgo"
  tgo_dir = os.path.join(workdir, "tgo", tgo_key(config))
  out = os.path.join(tgo_dir, f"tgo_{'all' if keep_all else 'correct'}.npz")
  if os.path.isfile(out):
    z = np.load(out)
    return {k: z[k] for k in z.files}
  n = config.tgo.num_questions
  qs = train_q[:n] if n > 0 else train_q
  rc = RolloutConfig.from_config(config)
  engine = RolloutEngine(None, tok, retriever, rc)
  engine.sampler = engine.sampler_for(teacher.graphdef, teacher.params,
                                      [q["question"] for q in qs], margin=32)
  sp = SamplingParams(greedy=config.tgo.temperature == 0, temperature=max(
      config.tgo.temperature, 1e-6))
  # TGO belongs to the prepared world (shared by training seeds): drawn with its seed.
  trajs = E.rollouts(engine, qs, config.eval.batch_size,
                     rng_seed=prepare.world_seed(config) + 31, sp=sp, label="tgo",
                     partial=os.path.join(tgo_dir, "rollouts.partial"))
  full = B.from_trajectories(trajs, [q["golden_answers"] for q in qs], tok.pad_id)
  stats = {"questions": len(qs), "correct": int((full["score"] > 0).sum()),
           **B.rollout_metrics(trajs, full["score"])}
  if all(q.get("hops") for q in qs):  # synthetic questions: which correct answers were read
    texts = [tok.decode([i for i, m in zip(t.response_ids, t.loss_mask) if m]) for t in trajs]
    stats["restated_gold_facts"] = probe.restated_gold_facts(texts, qs, full["score"])
  _log(f"[tgo] {stats}")
  # One rollout serves both variants: every trajectory, and the correct ones.
  for variant, keep in (("all", np.ones(len(qs), bool)), ("correct", full["score"] > 0)):
    if keep.sum() == 0:
      continue
    arr = {k: v[keep] for k, v in full.items()}
    used = int(arr["mask"].sum(1).max())
    arr = {k: v[:, :B.width_bucket(used + 1)] if v.ndim == 2 else v for k, v in arr.items()}
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
  """KD on trajectories for `kd.epochs` epochs; validation EM after each; stops early when
  it reaches `kd.em_threshold` (the switch to stage 2)."""
  k = config.kd
  n = len(data["tokens"])
  bs = min(k.batch_size, n)
  spe = max(1, n // bs)
  total = k.epochs * spe
  loss_fn = distill.make_loss(student.graphdef, teacher.graphdef, loss, lam=lam,
                              alpha=k.skew_alpha, total_steps=total, impl=config.kernel.impl,
                              chunk=config.kernel.chunk, block=config.kernel.block)

  rows = lm_data.masked_batches(data["tokens"], data["mask"], data["gen"], bs, config.seed + 23)
  batch_fn = lambda step: dict(rows(step), step=np.full((bs,), step, np.int32))

  val_f = os.path.join(workdir, "eval", f"{name}_val.json")
  history = json.load(open(val_f)) if os.path.isfile(val_f) else []
  params = student.params
  for epoch in range(k.epochs):
    fc = FitConfig(steps=(epoch + 1) * spe, schedule_steps=total, lr=k.lr,
                   warmup_steps=min(k.warmup_steps, total // 2), log_every=config.train.log_every,
                   ckpt_every=spe, keep_ckpts=config.train.keep_ckpts)
    params, m = fit(name, workdir, student.graphdef, params, student.shardings, mesh, batch_fn,
                    fc, config.seed, _log, loss_fn=loss_fn, frozen=teacher.params,
                    frozen_sh=teacher.shardings)
    if len(history) <= epoch:
      summary = evaluate(params)
      history.append({"epoch": epoch + 1, "step": fc.steps, **summary, **m})
      _write_json(val_f, history)
      _log(f"[{name}] epoch {epoch + 1}/{k.epochs}: val EM {summary['avg']:.3f}")
    if k.em_threshold > 0 and history[epoch]["avg"] >= k.em_threshold:
      _log(f"[{name}] val EM {history[epoch]['avg']:.3f} ≥ kd.em_threshold "
           f"{k.em_threshold}: switching to the next stage")
      break
  return params, history


def needs_teacher(stages) -> bool:
  return any(k in ("tgo", "kd", "gkd") or o.get("kl_target") == "teacher" for k, o in stages)


def setup_run(config, workdir, with_teacher=True):
  """(prep results, student, teacher, tokenizer, retriever, train, dev, test questions).

  The synthetic world (a config with a `world` section) comes from `prepare`; otherwise the
  student (`model`) and teacher (`teacher_model`) are pretrained checkpoints and the questions
  come from `data.train/dev/test`.
  """
  if "world" in config:
    prep, models, tok, retriever = prepare.run(config, workdir)
    student, teacher = (Model(*models[w]) for w in ("student", "teacher"))
    d = os.path.join(workdir, "world")
    train_q, dev_q, test_q = (cli.read_jsonl(os.path.join(d, f"{s}.jsonl"))
                              for s in ("train", "dev", "test"))
  else:
    fields = ("data.train", "data.dev", "data.test") + (
        ("teacher_model.name",) if with_teacher else ())
    for field in fields:
      sec, name = field.split(".")
      if not config[sec][name]:
        fail(f"config.{field} is empty: pretrained-model training needs it")
    built = prepare.setup.build_model(config, workdir)
    student = Model(built.cfg, built.graphdef, built.params, built.shardings)
    teacher, tok = None, built.tokenizer
    if with_teacher:
      t = config.teacher_model
      cfg, gd, params, sh, _ = prepare.setup.load_pretrained(
          t.name, t.param_dtype, t.dtype, built.mesh, prepare.setup.rules(config),
          config.model.remat)
      teacher = Model(cfg, gd, params, sh)
    retriever = prepare.setup.build_retriever(config)
    files = [qa.read_qa(config.data[s]) for s in ("train", "dev", "test")]
    prep = {"skipped_no_answer": {f.name: f.skipped_no_answer for f in files}}
    train_q, dev_q, test_q = (f.rows for f in files)
  if teacher is not None and not (tok.vocab_size <= student.cfg.vocab_size
                                  <= teacher.cfg.vocab_size):
    fail(f"tokenizer ({tok.vocab_size}), student ({student.cfg.vocab_size}) and teacher "
         f"({teacher.cfg.vocab_size}) vocabularies: distillation needs one tokenizer whose ids "
         f"both heads cover (a teacher head may only be padded larger)")
  return prep, student, teacher, tok, retriever, train_q, dev_q, test_q


def export_student(config, workdir, name, student: Model, params):
  """An HF-format copy of a trained student in `workdir/models/<name>` (with its tokenizer),
  loadable by `ask --model`, `generate` and transformers."""
  out = os.path.join(workdir, "models", name)
  if os.path.isdir(out):
    return out
  from dgpo_jax.models import hf_io
  from dgpo_jax.parallel import distributed
  host = distributed.to_host(params)
  if jax.process_index() == 0:
    if "world" in config:
      spm = os.path.join(workdir, "tokenizer", f"spm{config.tokenizer.vocab_size}.model")
      hf_io.export_hf(out, student.cfg, host, extra_files={"tokenizer.model": open(spm, "rb")
                                                           .read()})
    else:
      from dgpo_jax.models import registry
      hf_io.export_hf(out, student.cfg, host, tokenizer_dir=registry.resolve(config.model.name))
  return out


def run(config, workdir):
  """Runs the configured method end to end; returns the results dict."""
  stages = plan(config)  # validates before any expensive work
  mesh = sharding.make_mesh(config.mesh)
  check_batches(config, mesh)
  prep, student, teacher, tok, retriever, train_q, dev_q, test_q = setup_run(
      config, workdir, with_teacher=needs_teacher(stages))
  rules = prepare.setup.rules(config)
  dev_q = dev_q[:config.eval.val_questions]
  test_q = test_q[:config.eval.num_questions]

  def evaluator(m: Model, qs, preemptible=True):
    return lambda p: prepare.evaluate(m.cfg, m.graphdef, p, tok, retriever, config, qs,
                                      preemptible=preemptible)[0]

  rc = RolloutConfig.from_config(config)
  tag = method_tag(config)
  keep_all = config.tgo.keep_incorrect or config.ablation == "kd_with_incorrect_tgo"
  current, checkpoints, history, names = student.params, {}, {}, {}
  for kind, opt in stages:
    cur = Model(student.cfg, student.graphdef, current, student.shardings)
    if kind == "tgo":
      data = teacher_trajectories(config, workdir, teacher, tok, retriever, train_q)
    elif kind == "kd":
      # Named by what determines it, so methods that share a KD stage (dgpo, kd, the
      # ablations after KD) share its checkpoint within a workdir.
      name = (f"kd-{opt['loss']}-lam{opt['lam']:g}-{'all' if keep_all else 'correct'}-"
              f"{tgo_key(config)}")
      if "rl" in names:
        name += f"-after-{names['rl']}"
      else:
        name += seed_suffix(config)
      names["kd"] = name
      current, history["kd"] = distill_stage(config, workdir, name, cur, teacher, data,
                                             opt["loss"], opt["lam"], mesh,
                                             evaluator(student, dev_q))
      checkpoints["kd"] = current
    elif kind in ("rl", "gkd"):
      names["rl"] = rl_name(config)
      # PPO's reference model is the policy the RL stage starts from (the SFT/KD student in
      # sft_ppo, the base student in ppo/grpo); DGPO's is the teacher.
      other = teacher if kind == "gkd" or opt["kl_target"] == "teacher" else cur
      over = {k: v for k, v in opt.items() if k in ("kl_rows", "advantage", "kl_loss_coef")}
      current, last = run_rl(names["rl"], config, workdir, cur, other, (tok, retriever, rc),
                             train_q, mesh, rules, _log, mode="ppo" if kind == "rl" else "gkd",
                             # not preemptible: the RL step it belongs to is not saved yet
                             evaluate=evaluator(student, dev_q[:config.eval.rl_val_questions],
                                                preemptible=False),
                             **over)
      checkpoints["rl"] = current
  results = {"method": config.method, "ablation": config.ablation, "seed": config.seed,
             "plan": [k for k, _ in stages], "stages": names, "prepare": prep, "test": {}}
  evals = [("student_base", "student_base", student.params)]
  if teacher is not None:
    evals.append(("teacher", "teacher", teacher.params))
  if "kd" in checkpoints:
    evals.append(("student_kd", f"student_{names['kd']}", checkpoints["kd"]))
  if stages[-1][0] != "kd":
    evals.append(("student_final", f"student_final-{tag}{seed_suffix(config)}", current))
  for label, file_label, p in evals:
    if label in ("student_kd", "student_final"):  # the trained students
      export_student(config, workdir, file_label, student, p)
  samples = {}
  passages = None  # gold passages for ARCap Thinking: read once, only if an eval needs them
  for label, file_label, p in evals:
    m = teacher if label == "teacher" else student
    f = os.path.join(workdir, "eval", f"test_{file_label}.json")
    if os.path.isfile(f):
      row = json.load(open(f))
    else:
      summary, trajs = prepare.evaluate(m.cfg, m.graphdef, p, tok, retriever, config, test_q,
                                        partial=f[:-len(".json")] + ".partial")
      row = dict(summary, samples=report.sample_trajectories(trajs, test_q, tok))
      # Per question, in test order: paired comparisons between methods (eval.stats).
      row["em_per_question"] = [exact_match(t.answer, q["golden_answers"])
                                for t, q in zip(trajs, test_q)]
      row["arcap"] = arcap.query_and_source(test_q, trajs, tok)
      if config.eval.arcap_thinking:
        if passages is None:
          corpus = (os.path.join(workdir, "world", "corpus.jsonl") if "world" in config
                    else config.data.corpus)
          passages = E.read_passages(corpus, {i for q in test_q
                                              for i in (q.get("gold_ids") or [])})
        row["arcap"]["thinking_em"], row["arcap"]["thinking_n"] = E.thinking(
            m.graphdef, p, tok, retriever, rc, test_q, passages, config.eval.batch_size,
            partial=f[:-len(".json")] + ".partial-thinking")
      _write_json(f, row)
      _log(f"[eval] {label} test EM: {summary}")
    samples[label] = row.pop("samples", {})
    results["test"][label] = row
  if stages[-1][0] == "kd":
    results["test"]["student_final"] = results["test"]["student_kd"]
  _write_json(os.path.join(workdir, "results.json"), results)
  if jax.process_index() == 0:
    report.write(workdir, config, results, history, samples)
  return results
