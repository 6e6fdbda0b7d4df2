"""User-facing errors.

Every error a user can cause (bad path, bad config, bad checkpoint) is raised as
`DgpoError` with a one-line message naming the file/field/tensor and what was expected.
CLIs print the message without a traceback (`utils.cli.run`).
"""

from typing import NoReturn


class DgpoError(Exception):
  """An error caused by user input; its message is meant to be read as is."""


def fail(msg: str) -> NoReturn:
  raise DgpoError(msg)
