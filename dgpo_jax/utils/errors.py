"""User-facing errors.

Every error a user can cause (bad path, bad config, bad checkpoint) is raised as
`DgpoError` with a one-line message naming the file/field/tensor and what was expected.
CLIs print the message without a traceback.
"""

import functools
import sys


class DgpoError(Exception):
  """An error caused by user input; its message is meant to be read as is."""


def fail(msg: str) -> "NoReturn":  # noqa: F821
  raise DgpoError(msg)


def cli_errors(fn):
  """Wraps a CLI `main(argv)` so that DgpoError prints one line and exits 2."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except DgpoError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapper
