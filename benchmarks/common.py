"""Shared benchmark output."""

import json


def emit(result: dict, out: str | None):
  """Prints the result as JSON and writes it to `out` when given."""
  text = json.dumps(result, indent=2)
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text)
