"""The error types every layer raises (below the ground floor: every module may import this one, it imports nothing).

``str(e)`` of each is one line naming the problem and the fix; train.py prints it and exits 2.
"""


class ConfigError(ValueError):
    """A problem with the arguments, a model, a run folder or another file the user named."""


class DataError(ValueError):
    """A problem with data or task choice."""


class Interrupted(RuntimeError):
    """A stop was requested (SIGTERM/SIGUSR1/SIGINT). ``checkpointed``: the training state was written at a step
    boundary (the trainer's stops); False where the stop came before anything resumable was written."""

    def __init__(self, message, checkpointed=True):
        super().__init__(message)
        self.checkpointed = checkpointed


# Exit codes of every entry point (train.py, predict.py and the other scripts): the one table.
EXIT_OK = 0
EXIT_FAILED = 1  # train.py: the run is complete but its adapter could not be written or pushed; sweep.py: a run
# failed; get_data.py: a file differs from its recorded checksum
EXIT_BAD_INPUT = 2  # one line on stderr naming the problem and the fix; nothing of the user's was changed
EXIT_DIVERGED = 3  # training stopped on a NaN/inf loss
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal, what is needed to continue is on disk: run the same command
