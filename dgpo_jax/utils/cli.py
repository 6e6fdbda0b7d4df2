"""Shared CLI setup."""

import json
import logging


def setup_logging():
  """Silences JAX's backend probing (TPU/GPU plugin lookups) on CPU-only hosts."""
  for name in ("jax._src.xla_bridge", "absl", "orbax", "jax._src.distributed"):
    logging.getLogger(name).setLevel(logging.WARNING)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)


def add_xla_flags(flags: str):
  """Appends `flags` to $XLA_FLAGS (skipping any already there); XLA reads them when the
  backend starts, so call this before the first array is made."""
  import os
  have = os.environ.get("XLA_FLAGS", "").split()
  new = [f for f in flags.split() if f not in have]
  if new:
    os.environ["XLA_FLAGS"] = " ".join(have + new)


def run(fn, argv, *args):
  """A CLI's body: refuses stray arguments, quiets logging, turns SIGTERM into a checkpointed
  stop (exit status 75, `utils.preemption`) and a DgpoError into one line on stderr and exit
  status 2."""
  import sys

  from absl import app

  from dgpo_jax.utils import preemption
  from dgpo_jax.utils.errors import DgpoError
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  preemption.install()
  try:
    return fn(*args)
  except preemption.Preempted as e:
    print(f"[preemption] {e}", file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)
  except DgpoError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # a write no stage wrapped: still one line, naming the file
    where = f"{e.filename}: " if e.filename else ""
    print(f"error: {where}{e.strerror or e}", file=sys.stderr)
    sys.exit(2)


def write_json(path: str, obj, indent: int = 1):
  """Writes JSON under a temporary name and renames it, so a crash never leaves a
  half-written file that looks complete. A failed write (disk full, no permission) is a
  DgpoError naming the path; the previous file, if any, is left as it was."""
  import json
  import os
  makedirs(os.path.dirname(os.path.abspath(path)))
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=indent, default=str)
    os.replace(tmp, path)
  except OSError as e:
    _remove_quietly(tmp)
    write_failed(path, e)


def makedirs(path: str):
  import os
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    write_failed(path, e)


def write_failed(path: str, e: OSError):
  """Raises the one-line DgpoError for a write that failed with `e`."""
  from dgpo_jax.utils.errors import fail
  fail(f"cannot write {path}: {e.strerror or e} (errno {e.errno}); free space or fix "
       f"permissions, then rerun the same command to resume")


def _remove_quietly(path: str):
  import os
  try:
    os.remove(path)
  except OSError:
    pass


def read_jsonl(path: str) -> list:
  """The records of a JSON-lines file (blank lines skipped); a malformed line is a DgpoError
  naming the file and line."""
  from dgpo_jax.utils.errors import fail
  out = []
  with open(path) as f:
    for n, line in enumerate(f, start=1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError as e:
          fail(f"{path}:{n}: not a JSON record ({e.msg} at column {e.colno})")
  return out


def cache_dir() -> str:
  """Where converted models, indexes and compiled programs are kept: $DGPO_JAX_CACHE, else
  ~/.cache/dgpo_jax (never the repository)."""
  import os
  return os.environ.get("DGPO_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                       "dgpo_jax"))


def default_xla_cache() -> str:
  """$JAX_COMPILATION_CACHE_DIR when set, else `cache_dir()`/xla."""
  import os
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(cache_dir(), "xla")


def compilation_cache(path: str):
  """Turns on XLA's persistent compilation cache in `path` ("" leaves it off).

  A run compiles dozens of fixed-shape programs (each rollout width, the update steps); a
  resumed run, a later stage or another seed of the same config loads them instead of
  compiling again (figures: docs/benchmarks.md, "Decoder choices"). Entries are keyed by the
  program and the compiler, so a stale entry is never used; an unreadable one is compiled
  again (JAX warns)."""
  if not path:
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  # JAX's default also keeps XLA's per-fusion GPU autotuning results under `path`, and that
  # puts the path into every entry's key: a cache copied or moved (a workdir with its cache,
  # a copied preparation) then missed every entry, on CPU too. Whole compiled programs are
  # still cached; only a new program's GPU autotuning is not reused.
  jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
