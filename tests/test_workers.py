"""pipeline.workers: parts run side by side in spawned processes, each with its own log; a
failure names its part and quotes its log; SIGTERM reaches the parts, which stop with 75."""

import os
import threading
import time

import pytest

from dgpo_jax.pipeline import workers
from dgpo_jax.utils import preemption
from dgpo_jax.utils.errors import DgpoError, fail


def _write(path, text):  # the parts' targets: module-level, so that spawn can pickle them
  print(f"writing {path}")
  with open(path, "w") as f:
    f.write(f"{text} from pid {os.getpid()}")


def _fail(where):
  print("about to fail")
  fail(f"{where}: the bad field")


def _wait_for_sigterm(path):
  open(path, "w").close()  # "started"
  deadline = time.time() + 60
  while not preemption.pending() and time.time() < deadline:
    time.sleep(0.05)
  preemption.stop("the waiting part", 3)


def test_parts_run_in_their_own_processes_and_logs(tmp_path):
  outs = [str(tmp_path / f"out{i}") for i in range(3)]
  parts = [workers.Part(f"p{i}", _write, (o, f"part {i}")) for i, o in enumerate(outs)]
  workers.run(parts, str(tmp_path / "logs"), workers=2, every_s=0.1)
  texts = [open(o).read() for o in outs]
  assert [t.split(" from")[0] for t in texts] == ["part 0", "part 1", "part 2"]
  assert len({t.split("pid ")[1] for t in texts} | {str(os.getpid())}) == 4
  for i, o in enumerate(outs):
    assert workers.last_lines(str(tmp_path / "logs" / f"p{i}.log")) == [f"writing {o}"]


def test_a_failed_part_is_named_with_its_log(tmp_path):
  parts = [workers.Part("fine", _write, (str(tmp_path / "a"), "x")),
           workers.Part("broken", _fail, ("config.scaling.x",))]
  with pytest.raises(DgpoError, match=r"(?s)broken stopped with exit status 2 .*about to fail"
                                      r".*config.scaling.x: the bad field"):
    workers.run(parts, str(tmp_path / "logs"), workers=2)
  assert os.path.isfile(tmp_path / "a")  # the other part still finished


def test_sigterm_reaches_the_parts_and_the_rest_do_not_start(tmp_path):
  started = [tmp_path / "s0", tmp_path / "s1"]
  parts = [workers.Part("waits", _wait_for_sigterm, (str(started[0]),)),
           workers.Part("queued", _wait_for_sigterm, (str(started[1]),))]

  def notice():
    while not started[0].exists():
      time.sleep(0.05)
    preemption.request()

  threading.Thread(target=notice, daemon=True).start()
  try:
    with pytest.raises(preemption.Preempted, match="rerun the same command"):
      workers.run(parts, str(tmp_path / "logs"), workers=1)
  finally:
    preemption.reset()
  assert "checkpointed at step 3" in open(tmp_path / "logs" / "waits.log").read()
  assert not started[1].exists()
