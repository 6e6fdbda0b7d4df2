"""benchmarks.log_phases: phases of a timestamped progress log."""

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
