"""Builds what every stage needs from a config: mesh, tokenizer, sharded model."""

import os
from typing import Optional

import jax
from flax import nnx

from dgpo_jax.data import corpus as corpus_lib
from dgpo_jax.data import lm_data
from dgpo_jax.models import config as model_config
from dgpo_jax.models import registry
from dgpo_jax.models.decoder import Decoder
from dgpo_jax.models.tokenizer import SentencePieceTokenizer, Tokenizer
from dgpo_jax.parallel import sharding
from dgpo_jax.train.step import Model
from dgpo_jax.utils.errors import fail


def rules(config):
  return sharding.rules_of(config)


def corpus_texts(config):
  """Passages of the configured corpus as text ("title\\ntext"), honouring data.max_docs."""
  out = []
  for p in corpus_lib.iter_corpus(config.data.corpus):
    out.append(p.contents)
    if config.data.max_docs and len(out) >= config.data.max_docs:
      break
  if not out:
    fail(f"{config.data.corpus}: corpus is empty")
  return out


def build_tokenizer(config, workdir: str, texts=None) -> Optional[Tokenizer]:
  """A SentencePiece tokenizer trained on the corpus (cached in the workdir), or None when
  the config uses the pretrained model's own tokenizer."""
  kind = config.tokenizer.kind
  if kind == "model":
    return None
  if kind != "sentencepiece":
    fail(f"config.tokenizer.kind={kind!r}: expected 'model' or 'sentencepiece'")
  prefix = lm_data.spm_prefix(workdir, config.tokenizer)
  if not os.path.isfile(prefix + ".model") and jax.process_index() == 0:
    texts = texts if texts is not None else corpus_texts(config)
    print(f"[setup] training SentencePiece ({config.tokenizer.vocab_size} pieces) on "
          f"{len(texts)} passages", flush=True)
    lm_data.train_sentencepiece(texts, prefix, config.tokenizer.vocab_size,
                                max_piece_length=config.tokenizer.get("max_piece_length", 0))
  from dgpo_jax.parallel import distributed
  distributed.barrier("tokenizer")  # the other processes read what process 0 wrote
  return SentencePieceTokenizer(prefix + ".model", chat_format="plain")


def build_model(config, workdir: str, ctor=Decoder) -> tuple[Model, jax.sharding.Mesh]:
  """(the config's `model`, with its tokenizer, created or loaded directly sharded; the
  mesh)."""
  mesh = sharding.make_mesh(config.mesh)
  rl = rules(config)
  m = config.model
  if m.init == "pretrained":
    loaded = load_pretrained(m.name, m.param_dtype, m.dtype, mesh, rl, m.remat, ctor)
    cfg, graphdef, params, shardings = (loaded.cfg, loaded.graphdef, loaded.params,
                                        loaded.shardings)
    tok = build_tokenizer(config, workdir) or loaded.tokenizer
  elif m.init == "random":
    tok = build_tokenizer(config, workdir)
    overrides = {k: getattr(m, k) for k in ("d_model", "n_layers", "n_heads", "n_kv_heads",
                                            "d_ff") if getattr(m, k)}
    overrides.update(param_dtype=m.param_dtype, dtype=m.dtype)
    if tok is not None:
      overrides.update(vocab_size=tok.vocab_size, eos_ids=tok.eos_ids, pad_id=tok.pad_id,
                       bos_id=tok.bos_id)
    cfg = model_config.preset(m.name, **overrides)
    if tok is None:
      fail("config.model.init='random' needs config.tokenizer.kind='sentencepiece'")
    graphdef, params, shardings = sharding.create_sharded(
        lambda: ctor(cfg, rngs=nnx.Rngs(config.seed), remat=m.remat), mesh, rl)
  else:
    fail(f"config.model.init={m.init!r}: expected 'random' or 'pretrained'")
  tok.check_vocab(cfg.vocab_size)
  return Model(cfg, graphdef, params, shardings, tok), mesh


def load_pretrained(spec, param_dtype, dtype, mesh, rules, remat=False, ctor=Decoder) -> Model:
  """A pretrained model (HF directory or registry name) with its tokenizer, placed sharded."""
  lm = registry.load(spec, param_dtype=param_dtype, dtype=dtype)
  make = lambda c, rngs: ctor(c, rngs=rngs, remat=remat)
  graphdef, abs_state = registry.abstract_state(lm.cfg, make)
  shardings = sharding.state_shardings(abs_state, mesh, rules)
  graphdef, params = registry.place_params(lm.cfg, lm.params, shardings, ctor=make)
  return Model(lm.cfg, graphdef, params, shardings, lm.tokenizer)


def build_retriever(config):
  """The configured search tool: a Search-R1 server, or a local index (built into the cache
  for `data.corpus` on first use when `retrieval.index` is empty)."""
  from dgpo_jax.utils.cli import cache_dir
  from dgpo_jax.retrieval import index as index_lib
  from dgpo_jax.retrieval.retriever import HttpRetriever, IndexRetriever
  r = config.retrieval
  if r.url:
    return HttpRetriever(r.url)
  path = r.index
  if not path:
    corpus = os.path.abspath(config.data.corpus)
    if not os.path.isfile(corpus):
      fail(f"config.data.corpus={config.data.corpus}: no such file")
    tag = f"{os.path.basename(corpus)}-{os.path.getsize(corpus)}-{r.encoder}-{r.kind}"
    path = os.path.join(cache_dir(), "indexes", tag)
    if not os.path.isfile(os.path.join(path, "meta.json")):
      print(f"[setup] building the {r.encoder}/{r.kind} index of {corpus} → {path}", flush=True)
      encoder = None
      if r.encoder != "bm25":
        from dgpo_jax.retrieval.encoder import Encoder
        encoder = Encoder(r.encoder)
      index_lib.build(corpus, path, r.encoder, encoder,
                      index_lib.BuildOptions(kind=r.kind, topk=r.topk))
  return IndexRetriever(path, encoder_name=r.encoder if r.encoder != "bm25" else None)
