"""Shared CLI setup."""

import logging


def setup_logging():
  """Silences JAX's backend probing (TPU/GPU plugin lookups) on CPU-only hosts."""
  for name in ("jax._src.xla_bridge", "absl", "orbax", "jax._src.distributed"):
    logging.getLogger(name).setLevel(logging.WARNING)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)


def run(fn, argv, *args):
  """A CLI's body: refuses stray arguments, quiets logging, and turns a DgpoError into one
  line on stderr and exit status 2."""
  import sys

  from absl import app

  from dgpo_jax.utils.errors import DgpoError
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  try:
    return fn(*args)
  except DgpoError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def write_json(path: str, obj, indent: int = 1):
  """Writes JSON under a temporary name and renames it, so a crash never leaves a
  half-written file that looks complete."""
  import json
  import os
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=indent)
  os.replace(path + ".tmp", path)
