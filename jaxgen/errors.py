"""Errors caused by the user's input (config, data, checkpoints, diverging runs), and preemption.

Their messages are one line naming the problem and the fix; the CLI prints them without a
traceback. Any other exception is a bug and keeps its traceback.
"""

import os
import re


class UserError(Exception):
  """Base of jaxgen's user-facing errors."""


class ConfigError(UserError, ValueError):
  """An invalid config file, override or setting."""


class Preempted(Exception):
  """SIGTERM or SIGINT stopped a run at a step boundary (after saving that step)."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


# TensorStore (Orbax's array writer) reports a failed write as a ValueError whose text names the
# file and the errno, e.g. 'Failed writing: "/x/d/ab12": ... [os_error_code='28']'.
_TENSORSTORE_OS_ERROR = re.compile(
  r"""(?:Failed writing|Error opening|local file):? "([^"]+)".*os_error_code=.(\d+)"""
)


def find_os_error(e: BaseException) -> OSError | None:
  """The OSError behind `e` (itself, its cause/context chain, an exception group, or a
  TensorStore error naming an errno), if any."""
  seen = set()
  todo = [e]
  while todo:
    x = todo.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    if isinstance(x, OSError) and x.errno is not None:
      return x
    match = _TENSORSTORE_OS_ERROR.search(str(x))
    if match:
      code = int(match.group(2))
      return OSError(code, os.strerror(code), match.group(1))
    todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
  return None
