"""`cli.compilation_cache`: compiled programs are found again by a later process, also in a
copy of the cache (a workdir copied with its cache, a copied preparation)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = """
import sys, jax, jax.numpy as jnp
from dgpo_jax.utils import cli
cli.compilation_cache(sys.argv[1])
print(float(jax.jit(lambda x: (x * 3.0 + 1.0).sum())(jnp.arange(7.0))))
"""


def _run(cache):
  env = dict(os.environ, JAX_LOG_COMPILES="1", PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", PROGRAM, str(cache)], env=env,
                        capture_output=True, text=True, check=True, timeout=120)


def test_a_copied_cache_is_hit(tmp_path):
  first = _run(tmp_path / "a")
  assert "cache hit" not in first.stderr
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  again = _run(tmp_path / "b")
  assert again.stdout == first.stdout
  assert "Persistent compilation cache hit" in again.stderr
