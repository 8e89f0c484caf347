"""Run train.py in this process with one injected fault (test helper, not a test file):

    python tests/fault_runner.py KIND:N -- <train.py arguments>

KIND: kill_at_step (SIGKILL just before optimizer step N), kill_in_checkpoint (SIGKILL while the N-th
train_state.pt is being written: the temporary file is complete but not yet renamed), term_at_step (SIGTERM to
itself before step N, as SLURM would send it), nan_at_step (step N's loss is reported as NaN).
Steps are counted from 1 within this process.

    python tests/fault_runner.py stop_in:PHASE:SIGNAL -- <train.py arguments>

SIGNAL (SIGTERM, SIGUSR1, SIGINT) to itself once, inside PHASE (the first call of the function PHASES names),
from inside a ``try: ... except Exception`` as library code has (a stop must not be raised into it), after
printing "fault_runner: SIGNAL in PHASE" on stderr. PHASE imports: while train.py (run as __main__) imports
transformers; teardown: from an atexit function, while the process ends (train.leave runs them).
"""
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# phase -> (module, attribute) whose first call receives the signal
PHASES = {"model_load": ("residual_prompts.models", "load_model"), "data_load": ("data_utils", "build_splits"),
          "resume_restore": ("run_folder", "restore_train_state"), "training": ("train_utils", "train_step"),
          "evaluation": ("train_utils", "evaluate"), "final_save": ("run_folder", "RunFolder.save_final"),
          "adapter_export": ("peft_adapter", "write_run_adapter"), "shutdown": ("distributed", "shutdown")}


def send(phase, sig):
    print(f"fault_runner: {sig.name} in {phase}", file=sys.stderr, flush=True)
    try:  # what library code around the moment looks like: a handler that raised would be swallowed here
        os.kill(os.getpid(), sig)
        for _ in range(50):
            time.sleep(0.01)
    except Exception as e:
        print(f"fault_runner: the stop raised {type(e).__name__} into the code it interrupted", file=sys.stderr)


def stop_in(phase, sig, argv):
    if phase == "imports":
        import importlib.abc
        import runpy

        class Finder(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "transformers":
                    sys.meta_path.remove(self)
                    send(phase, sig)
                return None

        sys.meta_path.insert(0, Finder())
        sys.argv = [str(ROOT / "train.py"), *argv]
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        return
    import importlib

    import train  # noqa: F401  (its imports first: the phases below are the run's)

    if phase == "teardown":
        import atexit

        atexit.register(send, phase, sig)
    else:
        module, attr = PHASES[phase]
        owner = importlib.import_module(module)
        if "." in attr:
            cls, attr = attr.split(".")
            owner = getattr(owner, cls)
        real = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            setattr(owner, attr, real)  # once
            send(phase, sig)
            return real(*args, **kwargs)

        setattr(owner, attr, wrapped)
    train.leave(train.main(argv, own_process=True))  # as train.py ends as __main__


argv = sys.argv[sys.argv.index("--") + 1:]
if sys.argv[1].startswith("stop_in:"):
    _, phase_name, sig_name = sys.argv[1].split(":")
    stop_in(phase_name, signal.Signals[sig_name], argv)

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
train.leave(train.main(argv, own_process=True))
