"""Wall time of each phase of a run, read off a timestamped progress log.

    python -m benchmarks.log_phases LOG [LOG ...] [--out=F.json]

A LOG is what `benchmarks/gpu_scaling.sh` writes: every line of the pipeline's output behind
an `HH:MM:SS` stamp. A phase is a run of consecutive lines with the same `[tag]`
(`[teacher_sft]`, `[tgo]`, `[kd-…]`; `[validate]` / `[evaluate]` lines belong to the phase
they interrupt). For each phase: its start (the stamp of the line before it), the stamp of its
first line and of its last. `to_first_s` is the time before the first line, where the
programs a phase needs are compiled (or read from the compilation cache) and its data built;
`span_s` the whole phase. Lines without a tag (tracebacks, the script's own) end no phase.
Prints JSON (and writes it to --out).
"""

import argparse
import datetime
import re

from benchmarks.common import emit

LINE = re.compile(r"^(\d\d:\d\d:\d\d) (.*)$")
TAG = re.compile(r"^\[([^\]]+)\]")
INNER = ("validate", "evaluate")  # rollouts inside another phase (its validation, its eval)


def _seconds(stamp: str) -> int:
  t = datetime.datetime.strptime(stamp, "%H:%M:%S")
  return t.hour * 3600 + t.minute * 60 + t.second


def phases(lines) -> list:
  """The phases of one log's lines, in order (see the module docstring)."""
  out, prev_t, cur = [], None, None
  for n, raw in enumerate(lines, 1):
    m = LINE.match(raw.rstrip("\n"))
    if not m:
      continue
    t, text = _seconds(m.group(1)), m.group(2).strip()
    if prev_t is not None and t < prev_t:
      t += 86400  # the log ran past midnight
    tag = TAG.match(text)
    tag = tag.group(1) if tag else None
    if tag and tag not in INNER and tag != (cur or {}).get("tag"):
      cur = {"tag": tag, "line": n, "start": prev_t if prev_t is not None else t, "first": t}
      out.append(cur)
    if cur is not None and (tag in INNER or tag == cur["tag"]):
      cur["last"] = t
    prev_t = t
  for p in out:
    p["to_first_s"] = p["first"] - p["start"]
    p["span_s"] = p["last"] - p["start"]
    for k in ("start", "first", "last"):
      p[k] = str(datetime.timedelta(seconds=p[k] % 86400))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("logs", nargs="+")
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  res = {}
  for path in a.logs:
    try:
      with open(path, encoding="utf-8", errors="replace") as f:
        res[path] = phases(f)
    except OSError as e:
      raise SystemExit(f"error: {path}: {e.strerror}")
    if not res[path]:
      raise SystemExit(f"error: {path}: no `HH:MM:SS [tag] …` lines (not a gpu_scaling.sh log?)")
  emit(res, a.out)


if __name__ == "__main__":
  main()
