"""Run train.py in this process with one injected fault (test helper, not a test file):

    python tests/fault_runner.py KIND:N -- <train.py arguments>

KIND: kill_at_step (SIGKILL just before optimizer step N), kill_in_checkpoint (SIGKILL while the N-th
train_state.pt is being written: the temporary file is complete but not yet renamed), term_at_step (SIGTERM to
itself before step N, as SLURM would send it), nan_at_step (step N's loss is reported as NaN).
Steps are counted from 1 within this process.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run_folder  # noqa: E402
import train  # noqa: E402
import train_utils  # noqa: E402

kind, n = sys.argv[1].split(":")
n = int(n)
counts = {"steps": 0, "writes": 0}
real_step, real_write = train_utils.train_step, run_folder.atomic_write


def step(*args, **kwargs):
    counts["steps"] += 1
    if counts["steps"] == n and kind == "kill_at_step":
        os.kill(os.getpid(), signal.SIGKILL)
    if counts["steps"] == n and kind == "term_at_step":
        os.kill(os.getpid(), signal.SIGTERM)
    loss = real_step(*args, **kwargs)
    return loss * float("nan") if counts["steps"] == n and kind == "nan_at_step" else loss


def write(path, fn):
    if kind == "kill_in_checkpoint" and path.endswith(run_folder.TRAIN_STATE):
        counts["writes"] += 1
        if counts["writes"] == n:
            def write_then_die(f):
                fn(f)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(path, write_then_die)
    return real_write(path, fn)


train_utils.train_step = step
run_folder.atomic_write = write
sys.exit(train.main(sys.argv[sys.argv.index("--") + 1:]))
