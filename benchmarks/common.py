"""Shared benchmark output and argument checks."""

import argparse
import json
import sys


def emit(result: dict, out: str | None):
  """Prints the result as JSON and writes it to `out` when given."""
  text = json.dumps(result, indent=2)
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text)


def pick(spec: str, flag: str, known, what: str = "runs") -> list:
  """The names of a comma-separated `flag` value, in their order; exits with a one-line error
  naming the flag and the unknown names when any is not in `known`."""
  names = [x for x in spec.split(",") if x]
  unknown = set(names) - set(known)
  if unknown:
    sys.exit(f"error: {flag}: unknown {what} {sorted(unknown)} (known: {', '.join(known)})")
  return names


def width_args(doc: str, widths: str) -> argparse.Namespace:
  """The flags of the per-width step benchmarks (train_step, kd_step, attention): --widths
  (comma-separated tokens per row, default `widths`), --repeats and --out."""
  ap = argparse.ArgumentParser(description=doc.split("\n")[0])
  ap.add_argument("--widths", default=widths)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default=None)
  return ap.parse_args()
