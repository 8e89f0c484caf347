"""The error types every layer raises (below the ground floor: every module may import this one, it imports nothing).

``str(e)`` of each is one line naming the problem and the fix; train.py prints it and exits 2.
"""


class ConfigError(ValueError):
    """A problem with the arguments, a model, a run folder or another file the user named."""


class DataError(ValueError):
    """A problem with data or task choice."""
