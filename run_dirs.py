"""Finished runs on disk, for sweep aggregation (scripts/make_table.py, scripts/plot_curves.py).

A run directory is one that holds both ``args.json`` and ``results.json`` (written by train.py). Its method label
comes from the arguments that define the method; runs that share a label, the ``--group_by`` values and the task
are seeds of one cell, and any other argument that differs inside a cell is reported, never silently averaged.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from data_utils import TASKS

# Arguments that make runs replicates of one another (averaged over) or do not change the numbers.
REPLICATE_KEYS = {"seed", "data_seed"}
NOT_DEFINING = {"save_dir", "save_name", "device", "progress", "overwrite", "resume", "save_every_steps", "data_dir",
                "eval_batch_size"}
METRICS = ("best_val", "test")  # --metric of both scripts: results.json's best_val_score or test.score


@dataclass
class Run:
    path: str
    args: dict
    results: dict

    @property
    def task(self) -> str:
        return self.results.get("task") or self.args["task"]

    @property
    def method(self) -> str:
        return method_label(self.args)


def method_label(args: dict) -> str:
    """The method a run trains, named as in the paper's tables.

    prefix_len 0 -> "Fine-tuning"; prefix_MLP None -> "PT" (Lester et al.); a network with the skip connection ->
    "Residual PT (MLP1)"; without it -> "PT + MLP1 (no residual)" (same rule for MLP2, LSTM*, transformer).
    A prompt trained together with model weights adds " + fine-tuning" (--freeze_weights 0) or
    " + 'shared' trained" (--freeze_except shared).
    """
    if int(args.get("prefix_len", 10)) == 0:
        return "Fine-tuning"
    net = str(args.get("prefix_MLP", "None"))
    if net == "None":
        label = "PT"
    elif int(args.get("residual", 1)):
        label = f"Residual PT ({net})"
    else:
        label = f"PT + {net} (no residual)"
    if not int(args.get("freeze_weights", 0)):
        label += " + fine-tuning"
    elif str(args.get("freeze_except", "xxxxxxx")).strip("x"):  # train.py's test for a pattern that matches
        label += f" + '{args['freeze_except']}' trained"
    return label


def method_rank(label: str) -> tuple:
    """Row order of tables and legends: fine-tuning, PT, Residual PT, other reparameterizations."""
    for i, prefix in enumerate(("Fine-tuning", "PT", "Residual PT", "PT + ")):
        if label == prefix or (i >= 2 and label.startswith(prefix)):
            return i, label
    return 4, label


def task_rank(task: str) -> tuple:
    """Column order: the task registry's (GLUE, then SuperGLUE as in the paper), unknown names last."""
    order = list(TASKS)
    return (order.index(task), task) if task in order else (len(order), task)


def find_runs(paths) -> tuple[list[Run], list[str]]:
    """Every run directory under ``paths`` (recursive; a path may be a run directory itself), each once.
    Returns (complete runs sorted by path, paths of incomplete runs: results.json says complete false or is
    unreadable). A missing path raises FileNotFoundError."""
    found = set()
    for root in paths:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root} is not a directory")
        for d, dirs, files in os.walk(root):
            dirs.sort()
            if "args.json" in files and "results.json" in files:
                found.add(os.path.realpath(d))
    runs, incomplete = [], []
    for d in sorted(found):
        try:
            with open(os.path.join(d, "args.json")) as f:
                args = json.load(f)
            with open(os.path.join(d, "results.json")) as f:
                results = json.load(f)
        except (OSError, ValueError):
            incomplete.append(d)
            continue
        (runs.append(Run(d, args, results)) if results.get("complete") is True else incomplete.append(d))
    return runs, incomplete


def score(run: Run, metric: str) -> float | None:
    """The run's score for --metric (best_val: best_val_score; test: test.score), or None where it has none."""
    if metric == "best_val":
        return run.results.get("best_val_score")
    return (run.results.get("test") or {}).get("score")


def check_group_by(runs: list[Run], group_by: list[str]) -> None:
    """Every --group_by name must be an argument the runs recorded (other than task: tasks are the columns)."""
    if "task" in group_by or len(set(group_by)) < len(group_by):
        raise ValueError(f"--group_by {','.join(group_by)}: name each argument once, and not task (every task is "
                         f"a column already)")
    known = set().union(*(r.args for r in runs)) if runs else set()
    unknown = [g for g in group_by if g not in known]
    if unknown:
        raise ValueError(f"--group_by {','.join(unknown)}: not an argument in the runs' args.json; "
                         f"valid: {', '.join(sorted(known))}")


def mixed_arguments(runs: list[Run]) -> dict[str, list]:
    """Arguments (other than seeds and bookkeeping) whose values differ among ``runs`` -> sorted distinct values."""
    keys = set().union(*(r.args for r in runs)) - REPLICATE_KEYS - NOT_DEFINING
    out = {}
    for k in sorted(keys):
        values = {json.dumps(r.args.get(k), sort_keys=True) for r in runs}
        if len(values) > 1:
            out[k] = sorted(json.loads(v) for v in values) if _sortable(values) else [json.loads(v) for v in values]
    return out


def _sortable(values):
    try:
        sorted(json.loads(v) for v in values)
        return True
    except TypeError:
        return False


def load_runs(paths, group_by_text: str, prog: str):
    """What make_table.py and plot_curves.py start with: (complete runs, the --group_by keys). Incomplete runs are
    named in a warning on stderr; no complete run, or an unknown --group_by key, raises ValueError."""
    group_by = [g for g in group_by_text.split(",") if g]
    runs, incomplete = find_runs(paths)
    if not runs:
        raise ValueError(f"no complete run (a folder with args.json and results.json whose complete is true) "
                         f"under {', '.join(paths)}")
    check_group_by(runs, group_by)
    if incomplete:
        print(f"{prog}: warning: skipped {len(incomplete)} incomplete run(s): {', '.join(incomplete)}",
              file=sys.stderr)
    return runs, group_by
