"""Optional: QA files prepared once as a tensorflow-datasets dataset in array_record format.

For large training sets read from every host: `prepare` converts QA files (any schema
`data/qa.py` accepts, with the same skipping and errors) into one array_record dataset per
split; hosts then read it by random access through `as_data_source` (no TensorFlow, no
parsing of the original files, each host reading only the rows it needs).

    pip install tensorflow-datasets==4.9.10 array-record==0.8.6 importlib_resources  # optional
    python -m dgpo_jax.data.tfds_qa --data_dir=DIR --train=nq_train.jsonl,hotpotqa_train.jsonl \
        --test=nq_test.jsonl
    # then, in a config: data.train = "tfds:DIR:train"

The core never imports tensorflow_datasets: only this module does, and only when used.
"""

import json
import sys

from dgpo_jax.data import qa
from dgpo_jax.utils.errors import fail

NAME = "dgpo_qa"


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    fail("tfds QA datasets need the optional extra: pip install tensorflow-datasets==4.9.10 "
         "array-record==0.8.6 importlib_resources")
  return tfds


_CLASS = []


def _builder_class():
  """The builder class, defined once (tfds registers builders by name)."""
  if _CLASS:
    return _CLASS[0]
  tfds = _tfds()

  class DgpoQa(tfds.core.GeneratorBasedBuilder):
    """QA rows: id, question, golden answers, source dataset, question family."""
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, files=None, **kw):
      self._files = files or {}
      super().__init__(file_format="array_record", **kw)

    def _info(self):
      t = tfds.features.Text()
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "id": t, "question": t, "golden_answers": tfds.features.Sequence(t),
          "dataset": t, "family": t}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(specs) for split, specs in self._files.items()}

    def _generate_examples(self, specs):
      for spec in specs:
        f = qa.read_qa(spec)
        if f.skipped_no_answer:
          print(f"[tfds_qa] {f.name}: {f.skipped_no_answer} rows without answers skipped",
                flush=True)
        for i, r in enumerate(f.rows):
          yield f"{f.name}/{i}", {"id": str(r.get("id", i)), "question": r["question"],
                                  "golden_answers": list(r["golden_answers"]), "dataset": f.name,
                                  "family": str(r.get("family", ""))}

  _CLASS.append(DgpoQa)
  return DgpoQa


def prepare(files: dict, data_dir: str) -> dict:
  """Writes {split: [QA file specs]} as array_record under data_dir; returns row counts."""
  if not files:
    fail("tfds_qa.prepare: no files given")
  b = _builder_class()(files=files, data_dir=data_dir)
  b.download_and_prepare()
  return {s: b.info.splits[s].num_examples for s in files}


def _decode(v):
  if isinstance(v, bytes):
    return v.decode("utf-8")
  if isinstance(v, (list, tuple)) or type(v).__name__ == "ndarray":
    return [_decode(x) for x in v]
  return v


def data_source(data_dir: str, split: str):
  """The split as a random-access sequence of raw records (bytes fields)."""
  tfds = _tfds()
  try:
    b = _builder_class()(data_dir=data_dir)
    return b.as_data_source(split=split)
  except Exception as e:  # tfds raises many types for a missing or partial dataset
    fail(f"tfds QA dataset {data_dir} split {split!r}: cannot read ({type(e).__name__}: "
         f"{str(e).splitlines()[0][:200]}); prepare it with python -m dgpo_jax.data.tfds_qa")


def read_rows(data_dir: str, split: str, indices=None) -> list:
  """QA rows in our form ({"id", "question", "golden_answers", "family"?, "data_source"}),
  all of them or only `indices` (e.g. this host's shard)."""
  ds = data_source(data_dir, split)
  idx = range(len(ds)) if indices is None else indices
  out = []
  for i in idx:
    r = {k: _decode(v) for k, v in ds[int(i)].items()}
    row = {"id": r["id"], "question": r["question"], "golden_answers": r["golden_answers"],
           "data_source": r["dataset"]}
    if r.get("family"):
      row["family"] = r["family"]
    out.append(row)
  return out


def main(argv=None):
  import argparse
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data_dir", required=True)
  for s in ("train", "dev", "test"):
    ap.add_argument(f"--{s}", default="", help="comma-separated [name=]FILE specs")
  a = ap.parse_args(argv)
  from dgpo_jax.utils.errors import DgpoError
  files = {s: [x for x in getattr(a, s).split(",") if x] for s in ("train", "dev", "test")}
  try:
    counts = prepare({s: v for s, v in files.items() if v}, a.data_dir)
  except DgpoError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(counts))


if __name__ == "__main__":
  main()
