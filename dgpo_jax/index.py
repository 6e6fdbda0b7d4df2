"""Build and query search indexes.

  python -m dgpo_jax.index build --corpus=FILE --encoder=minilm|e5-base-v2|e5-small-v2|bm25 \
      --out=DIR [--kind=auto|scann|exact] [--skip_bad] [--encoder_path=HF_DIR] \
      [--num_leaves=N --num_leaves_to_search=N --reorder=N] [--host_id=0 --num_hosts=1]
  python -m dgpo_jax.index search --index=DIR --query="..." [--topk=3]

`auto` picks exact search below 20,000 passages and ScaNN above. A ScaNN build measures
recall@k against exact search on sampled queries and stores it in meta.json.
"""

import json
import sys

from absl import app, flags

flags.DEFINE_string("corpus", None, "Corpus .jsonl ({id, contents}).")
flags.DEFINE_string("encoder", "minilm", "minilm, e5-base-v2, e5-small-v2 or bm25.")
flags.DEFINE_string("encoder_path", None, "HF directory of the encoder (E5 is not offline).")
flags.DEFINE_string("out", None, "Index directory to write.")
flags.DEFINE_enum("kind", "auto", ["auto", "scann", "exact", "bm25"], "Index kind.")
flags.DEFINE_bool("skip_bad", False, "Skip malformed corpus lines (counted) instead of failing.")
flags.DEFINE_integer("batch_size", 64, "Encoder batch size.")
flags.DEFINE_integer("shard_size", 50000, "Passages per embedding shard (resume granularity).")
flags.DEFINE_integer("num_leaves", None, "ScaNN leaves (default ≈ √n).")
flags.DEFINE_integer("num_leaves_to_search", None, "ScaNN leaves searched (default 20%).")
flags.DEFINE_integer("reorder", None, "ScaNN exact re-scoring candidates (default max(100, 20k)).")
flags.DEFINE_integer("host_id", 0, "This host's index when several hosts embed one corpus.")
flags.DEFINE_integer("num_hosts", 1, "Hosts embedding the corpus together.")
flags.DEFINE_string("index", None, "Index directory to search.")
flags.DEFINE_multi_string("query", [], "Query text (repeatable).")
flags.DEFINE_integer("topk", 3, "Documents per query.")
FLAGS = flags.FLAGS


def _build():
  from dgpo_jax.retrieval import index as index_lib
  from dgpo_jax.utils.errors import fail
  if not FLAGS.corpus or not FLAGS.out:
    fail("build needs --corpus and --out")
  encoder = None
  if FLAGS.encoder != "bm25":
    from dgpo_jax.retrieval.encoder import Encoder
    encoder = Encoder(FLAGS.encoder, FLAGS.encoder_path, batch_size=FLAGS.batch_size)
  opts = index_lib.BuildOptions(
      kind=FLAGS.kind, topk=FLAGS.topk, skip_bad=FLAGS.skip_bad, shard_size=FLAGS.shard_size,
      host_id=FLAGS.host_id, num_hosts=FLAGS.num_hosts,
      scann={"num_leaves": FLAGS.num_leaves, "num_leaves_to_search": FLAGS.num_leaves_to_search,
             "reorder": FLAGS.reorder})
  meta = index_lib.build(FLAGS.corpus, FLAGS.out, FLAGS.encoder, encoder, opts)
  print(json.dumps(meta, indent=2))


def _search():
  from dgpo_jax.retrieval.retriever import IndexRetriever
  from dgpo_jax.utils.errors import fail
  if not FLAGS.index or not FLAGS.query:
    fail("search needs --index and --query")
  r = IndexRetriever(FLAGS.index, encoder_path=FLAGS.encoder_path)
  for q, docs in zip(FLAGS.query, r.retrieve(FLAGS.query, FLAGS.topk)):
    print(f"query: {q}")
    for i, d in enumerate(docs):
      print(f"  {i + 1}. [{d.score:.4f}] {d.title}  (id {d.id})  {d.text[:100]!r}")


def main(argv):
  from dgpo_jax.utils import cli
  cmds = {"build": _build, "search": _search}
  if len(argv) != 2 or argv[1] not in cmds:
    print("usage: python -m dgpo_jax.index build|search [flags]", file=sys.stderr)
    sys.exit(2)
  cli.run(cmds[argv[1]], argv[:1])


if __name__ == "__main__":
  app.run(main)
