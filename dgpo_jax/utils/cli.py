"""Shared CLI setup."""

import logging


def setup_logging():
  """Silences JAX's backend probing (TPU/GPU plugin lookups) on CPU-only hosts."""
  for name in ("jax._src.xla_bridge", "absl", "orbax", "jax._src.distributed"):
    logging.getLogger(name).setLevel(logging.WARNING)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
