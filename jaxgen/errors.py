"""Errors caused by the user's input (config, data, checkpoints, diverging runs).

Their messages are one line naming the problem and the fix; the CLI prints them without a
traceback. Any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Base of jaxgen's user-facing errors."""


class ConfigError(UserError, ValueError):
  """An invalid config file, override or setting."""
