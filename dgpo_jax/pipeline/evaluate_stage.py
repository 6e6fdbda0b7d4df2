"""The evaluate command: a checkpoint, a config and QA files → EM/F1 per dataset + ARCap.

A checkpoint is either an HF directory (config.json + safetensors + tokenizer: a pretrained
model, or a student `main` exported under WORKDIR/models) or an orbax stage directory of a
run (`WORKDIR/checkpoints/<stage>`, e.g. KD or RL; its params are read from the newest
readable step). Either must match a model the config describes (its student or teacher),
checked before any rollout. Products in the output workdir: results.json, results.md and
report.md.
"""

import dataclasses
import json
import os
import time
import types
from typing import Optional

import jax

from dgpo_jax.data import lm_data, qa
from dgpo_jax.eval import evaluate as evaluation
from dgpo_jax.models import hf_io, registry
from dgpo_jax.models.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer
from dgpo_jax.parallel import sharding
from dgpo_jax.pipeline import prepare, report, setup
from dgpo_jax.rollout.engine import RolloutConfig
from dgpo_jax.utils import cli
from dgpo_jax.train.step import Model
from dgpo_jax.utils.checkpoint import Checkpointer
from dgpo_jax.utils.errors import DgpoError, fail

ARCH_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size")


def expected_models(config) -> dict:
  """{role: ModelConfig} of the models the config describes, from configs and HF config.json
  files only (no weights): the synthetic world's student and teacher, or the pretrained
  `model` and `teacher_model`."""
  if "world" in config:
    V = config.tokenizer.vocab_size
    tok = types.SimpleNamespace(vocab_size=V, eos_ids=(1,), pad_id=0, bos_id=None)
    return {w: prepare.model_cfg(config, w, tok) for w in ("student", "teacher")}
  out = {}
  for role, m in (("student", config.model), ("teacher", config.get("teacher_model"))):
    if m is not None and m.name and (role == "teacher" or m.init == "pretrained"):
      out[role] = hf_io.read_hf_config(registry.resolve(m.name)).replace(
          param_dtype=config.model.param_dtype, dtype=config.model.dtype)
  return out


def _arch_diffs(cfg, expected: dict) -> Optional[str]:
  """None when `cfg` matches one of the expected models, else what differs from each."""
  diffs = []
  for role, e in expected.items():
    d = [f"{f} {getattr(cfg, f)} vs {getattr(e, f)}" for f in ARCH_FIELDS
         if getattr(cfg, f) != getattr(e, f)]
    if not d:
      return None
    diffs.append(f"{role}: {', '.join(d)}")
  return "; ".join(diffs)


def _find_run_workdir(path: str) -> Optional[str]:
  """The training run directory above a checkpoint (holding world/ or results.json)."""
  d = os.path.abspath(path)
  for _ in range(3):
    d = os.path.dirname(d)
    if any(os.path.exists(os.path.join(d, f)) for f in ("world", "results.json", "config.json")):
      return d
  return None


def _run_tokenizer(config, run: Optional[str], where: str, cfg) -> Tokenizer:
  if config.tokenizer.kind == "sentencepiece":
    spm = lm_data.spm_prefix(run or "?", config.tokenizer) + ".model"
    if not os.path.isfile(spm):
      fail(f"{where}: cannot find the run's tokenizer ({spm}); evaluate the HF export under "
           f"WORKDIR/models instead, or keep the checkpoint inside its run directory")
    return SentencePieceTokenizer(spm, chat_format="plain")
  return load_tokenizer(registry.resolve(config.model.name), bos_id=cfg.bos_id,
                        eos_ids=cfg.eos_ids, pad_id=cfg.pad_id)


def load_checkpoint(config, path: str, mesh, rules,
                    run_workdir: str = "") -> tuple[Model, Optional[str]]:
  """Loads an HF directory or an orbax stage directory as one of the config's models.

  Returns (the model with its tokenizer, the training run it belongs to: `run_workdir`, by
  default the run directory above the checkpoint, or None). The run holds its tokenizer and,
  for the synthetic world, its index and corpus."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    fail(f"--checkpoint={path}: no such directory")
  expected = expected_models(config)
  m = config.model
  if os.path.isfile(os.path.join(path, "config.json")):
    diff = _arch_diffs(hf_io.read_hf_config(path), expected) if expected else None
    if diff:
      fail(f"--checkpoint={path} does not match the config's models (checkpoint vs config): "
           f"{diff}")
    return (setup.load_pretrained(path, m.param_dtype, m.dtype, mesh, rules),
            run_workdir or _find_run_workdir(path))
  ckpt = Checkpointer(path)
  if not ckpt.all_steps():
    ckpt.close()
    fail(f"--checkpoint={path}: neither an HF directory (config.json) nor an orbax "
         f"checkpoint directory (numbered steps)")
  step, state, _ = ckpt.restore(None)
  ckpt.close()
  where = f"--checkpoint={path} (step {step})"
  params = jax.tree.map(jax.device_get, evaluation.params_from_state(state, where))
  run = run_workdir or _find_run_workdir(path)
  errors = []
  for role, cfg in expected.items():
    tok = _run_tokenizer(config, run, where, cfg)
    if "world" in config:
      cfg = prepare.model_cfg(config, role, tok)
    cfg = cfg.replace(param_dtype=m.param_dtype, dtype=m.dtype)
    shard = sharding.state_shardings(registry.abstract_state(cfg)[1], mesh, rules)
    try:
      gd, placed = registry.place_params(cfg, params, shard)
    except DgpoError as e:
      errors.append(f"{role}: {e}")
      continue
    print(f"[evaluate] {where}: the config's {role}", flush=True)
    return Model(cfg, gd, placed, shard, tok), run
  fail(f"{where} does not match the config's models: {'; '.join(errors) or 'none described'}")


def default_data(config, run: Optional[str]) -> list:
  if "world" in config and run:
    return [f"synthetic_test={os.path.join(run, 'world', 'test.jsonl')}"]
  if config.data.test:
    return [config.data.test]
  fail("--data is empty and the config names no test file (config.data.test)")


def retriever_for(config, run: Optional[str]):
  if "world" in config:
    idx = os.path.join(run or "?", "world", "index_bm25")
    if not os.path.isfile(os.path.join(idx, "meta.json")):
      fail(f"the synthetic world's index {idx} does not exist: evaluate a checkpoint inside "
           f"its run directory, or set --config.retrieval.url")
    with config.unlocked():
      config.retrieval.index, config.retrieval.encoder = idx, "bm25"
  return setup.build_retriever(config)


def run(config, checkpoint: str, data: list, workdir: str, corpus: str = "",
        max_questions: int = 0, thinking: bool = True, run_workdir: str = "") -> dict:
  """Evaluates `checkpoint` on each QA file; writes results.json, results.md, report.md."""
  t0 = time.time()
  mesh = sharding.make_mesh(config.mesh)
  rules = setup.rules(config)
  model, run_dir = load_checkpoint(config, checkpoint, mesh, rules, run_workdir)
  files = [qa.read_qa(s) for s in (data or default_data(config, run_dir))]
  for f in files:
    if f.skipped_no_answer:
      print(f"[evaluate] {f.name}: {f.skipped_no_answer} rows without answers skipped",
            flush=True)
    if max_questions:
      f.rows = f.rows[:max_questions]
  retriever = retriever_for(config, run_dir)
  corpus = corpus or (os.path.join(run_dir, "world", "corpus.jsonl")
                      if "world" in config and run_dir else config.data.corpus)
  want = {i for f in files for r in f.rows for i in (r.get("gold_ids") or [])}
  passages = evaluation.read_passages(corpus, want)
  rc = RolloutConfig.from_config(config)
  out = {"checkpoint": os.path.abspath(checkpoint), "model": dataclasses.asdict(model.cfg),
         "datasets": {}}
  samples = {}
  done = []  # per-dataset results kept until the whole evaluation is written (preemption)
  for i, f in enumerate(files):
    keep = os.path.join(workdir, f"partial-{i}-{f.name}")
    done.append(keep + ".done.json")
    what = [out["checkpoint"], len(f.rows), thinking]
    kept = json.load(open(done[-1])) if os.path.isfile(done[-1]) else None
    if kept and kept[0] == what:
      _, out["datasets"][f.name], samples[f.name] = kept
      continue
    print(f"[evaluate] {f.name}: {len(f.rows)} questions", flush=True)
    figs, trajs = evaluation.evaluate(model.graphdef, model.params, model.tokenizer, retriever,
                                      rc, f.rows, config.eval.batch_size,
                                      passages if thinking else None, partial=keep)
    figs["skipped_no_answer"] = f.skipped_no_answer
    out["datasets"][f.name] = figs
    samples[f.name] = report.sample_trajectories(trajs, f.rows, model.tokenizer)
    if jax.process_index() == 0:
      cli.write_json(done[-1], [what, figs, samples[f.name]])
    print(f"[evaluate] {f.name}: EM {figs['em']:.3f} F1 {figs['f1']:.3f}", flush=True)
  out["average"] = evaluation.average(out["datasets"])
  out["wall_s"] = round(time.time() - t0, 1)
  table = evaluation.markdown(out)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    cli.write_json(os.path.join(workdir, "results.json"), out)
    with open(os.path.join(workdir, "results.md"), "w") as fh:
      fh.write(table)
    report.write_eval(workdir, config, out, table, samples)
    for d in done:
      if os.path.isfile(d):
        os.remove(d)
  print(table, flush=True)
  return out


PLAIN_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def export(config, checkpoint: str, out: str) -> str:
  """Writes `checkpoint` (HF or orbax stage directory) as a transformers-loadable directory:
  config.json, safetensors, generation config, tokenizer files and a chat template."""
  path = os.path.abspath(checkpoint)
  if not os.path.isdir(path):
    fail(f"--checkpoint={path}: no such directory")
  if config is None:
    if not os.path.isfile(os.path.join(path, "config.json")):
      fail(f"--checkpoint={path}: an orbax checkpoint needs --config (which model it is)")
    lm = registry.load(path)
    cfg, params, tok, tok_dir = lm.cfg, lm.params, lm.tokenizer, path
  else:
    mesh = sharding.make_mesh(config.mesh)
    model, _ = load_checkpoint(config, path, mesh, setup.rules(config))
    cfg, tok = model.cfg, model.tokenizer
    params = jax.tree.map(jax.device_get, model.params)
    if os.path.isfile(os.path.join(path, "config.json")):
      tok_dir = path
    elif config.tokenizer.kind == "sentencepiece":
      tok_dir = None
    else:
      tok_dir = registry.resolve(config.model.name)
  extra = {}
  if tok_dir is None or not any(os.path.isfile(os.path.join(tok_dir, f))
                                for f in ("tokenizer.json", "tokenizer.model")):
    extra["tokenizer.model"] = open(tok.path, "rb").read()
  fmt = tok.chat_format or "plain"
  has_cfg = tok_dir and os.path.isfile(os.path.join(tok_dir, "tokenizer_config.json"))
  if not has_cfg:
    extra["tokenizer_config.json"] = {
        "tokenizer_class": "LlamaTokenizer" if "tokenizer.model" in extra else
        "PreTrainedTokenizerFast", "chat_template": PLAIN_TEMPLATE if fmt == "plain" else None,
        "eos_token": tok.sp.id_to_piece(cfg.eos_ids[0]) if hasattr(tok, "sp") and cfg.eos_ids
        else None,
        "add_bos_token": False, "add_eos_token": False}
  if fmt == "plain":  # ChatML formats keep the template of the copied tokenizer_config.json
    extra["chat_template.jinja"] = PLAIN_TEMPLATE
  hf_io.export_hf(out, cfg, params, tokenizer_dir=tok_dir, extra_files=extra)
  print(f"[export] {path} → {out} ({cfg.num_params() / 1e6:.2f}M params)", flush=True)
  return out
