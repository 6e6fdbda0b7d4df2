"""benchmarks.log_phases and benchmarks.batch_widths: the GPU run's timing tools."""

import pytest

from benchmarks import log_phases

LOG = """\
23:59:50 slice 1: teacher 256x6x768
23:59:52 [prepare] teacher: 4.23M params
23:59:58 [teacher_sft] step 25/400  0.13 step/s
00:00:10 [validate]   64/100 questions
00:00:20 [teacher_sft] step 400: dev EM 0.190
00:00:21 Traceback (most recent call last):
00:00:25 [tgo]   64/1400 questions
00:00:40 [tgo]   1400/1400 questions
"""


def test_phases_split_on_tags_keep_inner_rollouts_and_cross_midnight():
  got = log_phases.phases(LOG.splitlines())
  assert [p["tag"] for p in got] == ["prepare", "teacher_sft", "tgo"]
  sft = got[1]
  # starts at the prepare line, first line 6 s later, its validation and last line inside it
  assert (sft["start"], sft["first"], sft["last"]) == ("23:59:52", "23:59:58", "0:00:20")
  assert (sft["to_first_s"], sft["span_s"]) == (6, 28)
  # the untagged traceback line neither ends the phase nor belongs to it, but is its start
  assert (got[2]["to_first_s"], got[2]["span_s"]) == (4, 19)


def test_a_log_without_stamped_tags_is_a_clear_error(tmp_path, monkeypatch, capsys):
  f = tmp_path / "x.log"
  f.write_text("no stamps here\n")
  monkeypatch.setattr("sys.argv", ["log_phases", str(f)])
  with pytest.raises(SystemExit, match="no `HH:MM:SS"):
    log_phases.main()


def test_batch_widths_are_the_sft_batches_widths_with_their_first_step():
  """benchmarks.batch_widths: the widths the pipeline's own SFT batches take, first step each;
  a coarser `data.width_multiple` gives fewer."""
  import numpy as np
  from benchmarks import batch_widths
  from configs import synthetic
  rng = np.random.default_rng(0)
  n, t = 64, 400
  lengths = rng.integers(30, t, n)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  sft = (rng.integers(3, 100, (n, t)).astype(np.int32), mask, mask.copy())
  got = {}
  for m in (64, 256):
    c = synthetic.get_config("")
    with c.unlocked():
      c.data.width_multiple = m
    got[m] = batch_widths.widths(c, sft, 40)
    assert min(got[m].values()) == 0 and all(w % m == 0 or w == t for w in got[m])
  assert len(got[256]) < len(got[64])
