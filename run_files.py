"""A run folder's files as data, without torch (top floor, beside run_folder.py): the file names, the one
"complete" decision, results.json's schema, and reading finished runs for tables and plots. make_table.py,
plot_curves.py, convergence.py and sweep.py's status read runs through this module alone, so they start without
importing torch; run_folder.py (which writes runs, with torch) builds on it.

    args.json        resolved arguments (written at the start)
    results.json     scores, history, facts; "complete": true once the final evaluation is written
    score_dict.npy   the original's score dictionary
    prompt.npy       the best projected prompt [P, H]: all inference needs
    checkpoint.pt    best trainable state (prompt, reparam, head) + projected prompt + args
    model/           the model, when its weights trained (save_pretrained)
    adapter/         the PEFT adapter of a T5 prompt run (peft_adapter.py)
    train_state.pt   while training: everything to continue exactly (removed once complete)
    metrics.jsonl, all_results.json, trainer_state.json, predictions_{val,test}.jsonl, tensorboard/
                     transformers-style side outputs, metrics under Hugging Face's names (metrics.HF_NAMES)
    .lock            exists (locked with fcntl.flock) while a run writes the folder: pid and host
"""
from __future__ import annotations

import json
import math
import os
import stat
import sys
from dataclasses import dataclass

from residual_prompts.errors import ConfigError
from residual_prompts.metrics import hf_metrics
from residual_prompts.tasks import TASKS

ARGS, RESULTS, SCORES, PROMPT, CHECKPOINT = "args.json", "results.json", "score_dict.npy", "prompt.npy", "checkpoint.pt"
TRAIN_STATE, MODEL_DIR, LOCK, ADAPTER_DIR = "train_state.pt", "model", ".lock", "adapter"
METRICS_LOG, ALL_RESULTS = "metrics.jsonl", "all_results.json"  # transformers-style outputs beside results.json
TENSORBOARD_DIR, PREDICTIONS = "tensorboard", "predictions_{split}.jsonl"
TRAINER_STATE = "trainer_state.json"
OUTPUTS = (RESULTS, CHECKPOINT, PROMPT, SCORES, TRAIN_STATE)  # files that make a folder a run's
# Arguments that do not define a run: they may change when a run is resumed (another machine, paths, logging,
# speed options that do not change numbers). The one list: resume checks and sweep tables both use it.
NOT_DEFINING = {"save_dir", "save_name", "device", "progress", "overwrite", "resume", "save_every_steps", "data_dir",
                "eval_batch_size", "fsdp", "compile", "log_every_steps", "report_to", "save_adapter", "push_to_hub"}
# Arguments that make runs replicates of one another (averaged over in tables).
REPLICATE_KEYS = {"seed", "data_seed"}
# --metric of the table scripts: results.json's best_val_score, test.score, and two ratios of its prompt norms
# (norm_ratio: mean row norm of the projected prompt phi(P) over the vocabulary's; branch_ratio: of phi(P) - P over P,
# with a residual network the branch next to the skip), and the run's wall time in seconds
METRICS = ("best_val", "test", "norm_ratio", "branch_ratio", "wall_time_s")
SCORE_METRICS = ("best_val", "test")  # scores (tables show them x 100); the others are plain ratios


# ---- results.json: its schema, in one place -------------------------------------------------------------------
def run_info(task_name, family, device, world_size, versions, args: dict, fingerprint, n_examples: dict,
             trainable_params: dict, prompt_init: dict) -> dict:
    """The facts at the top of results.json."""
    return {"task": task_name, "family": family, "device": str(device), "world_size": world_size,
            "versions": versions, "args": {k: v for k, v in args.items() if k not in NOT_DEFINING},  # defines the run
            "data_fingerprint": fingerprint, "n_examples": n_examples, "trainable_params": trainable_params,
            "prompt_init": prompt_init}


def scores(res: dict) -> dict:
    """An evaluation's entry in results.json (test, final_eval): score, metric, official metrics, loss."""
    return {k: res[k] for k in ("score", "metric", "official", "loss")}


def results_record(info: dict, history, final: dict | None, wall_time_s: float, test_history=False,
                   complete=False) -> dict:
    """results.json: the run's facts (info, from run_info), ``history`` (train_utils.History): every validation,
    training losses, the best epoch, final scores; ``test_history``: the test subset's scores at every validation
    (--test_eval_after_every_task 1); ``complete``: the final evaluation is in (what is_complete reads)."""
    best = None if history.best_epoch is None or not math.isfinite(history.best_score) else history.best_score
    return {**info, "complete": bool(complete), "validation": history.evals,
            "train": {"loss": history.train_loss, "acc": history.train_acc, "step_losses": history.step_losses},
            "best_epoch": history.best_epoch, "best_val_score": best, "wall_time_s": round(wall_time_s, 3),
            **({"test_history": history.test_evals} if test_history else {}), **(final or {})}


def all_results(results: dict) -> dict:
    """all_results.json, flat as transformers' run_glue writes it: ``epoch`` = epochs trained (a float, as the
    Trainer writes it), ``train_loss`` = the mean training loss over the whole run (the mean of the epochs' mean
    losses: every epoch has the same number of steps), ``train_runtime`` = the run's wall time, ``eval_*`` = the
    validation of the best state, ``test_*`` = its test half, each metric under its Hugging Face name
    (eval_accuracy, eval_f1, ...: metrics.HF_NAMES) beside eval_loss and eval_score (the early-stopping score);
    ``best_epoch``: the epoch of that validation counted as metrics.jsonl counts (1.0 = after the first epoch;
    results.json's best_epoch counts from 0)."""
    losses = [x for x in results.get("train", {}).get("loss") or [] if x is not None]
    n_train, runtime = (results.get("n_examples") or {}).get("train"), results.get("wall_time_s")
    best_epoch = results.get("best_epoch")
    flat = {"epoch": float(len(losses)), "best_epoch": None if best_epoch is None else float(best_epoch + 1),
            "train_runtime": runtime, "train_samples": n_train,
            "train_samples_per_second": round(n_train * len(losses) / runtime, 3) if n_train and runtime else None,
            "train_loss": sum(losses) / len(losses) if losses else None}
    best = next((e for e in results.get("validation", []) if e["epoch"] == best_epoch), None)
    for prefix, entry in (("eval", best), ("test", results.get("test"))):
        if entry:
            flat[f"{prefix}_loss"], flat[f"{prefix}_score"] = entry["loss"], entry["score"]
            flat.update(hf_metrics(entry.get("official") or {}, prefix))
    return flat


def run_outputs(path) -> list[str]:
    """The names of every output of a run present in the folder ``path``, results.json first (a folder never
    claims a result whose files are half gone): what --overwrite removes before the new run writes anything.
    args.json stays (it is rewritten), and so do the lock and files that are not a run's."""
    try:
        present = set(os.listdir(path))
    except OSError:
        return []
    prefix, suffix = PREDICTIONS.split("{split}")
    names = [RESULTS, *OUTPUTS, METRICS_LOG, ALL_RESULTS, TRAINER_STATE, MODEL_DIR, ADAPTER_DIR, TENSORBOARD_DIR]
    names += sorted(n for n in present if n.startswith(prefix) and n.endswith(suffix))
    return [n for n in dict.fromkeys(names) if n in present]


def train_summary(flat: dict, step: int) -> dict:
    """The last line of metrics.jsonl and log_history, as the Trainer's after training: from all_results."""
    return {"epoch": flat["epoch"], "step": step,
            **{k: flat[k] for k in ("train_runtime", "train_samples_per_second", "train_loss")}}


def trainer_state(records: list[dict], flat: dict, args: dict) -> dict:
    """trainer_state.json, the fields of transformers' Trainer that readers use: ``log_history`` = metrics.jsonl's
    records (where a resumed run logged a step twice, the later line), epoch, global_step, max_steps, num_train_epochs,
    train_batch_size, logging_steps, best_metric (eval_score of the best validation) and best_global_step."""
    kept = {}
    for r in records:
        kind = "eval" if any(k.startswith("eval_") for k in r) else "end" if "train_runtime" in r else "log"
        kept.pop((r.get("step"), kind), None)
        kept[(r.get("step"), kind)] = r
    history = sorted(kept.values(), key=lambda r: r.get("step") or 0)  # stable: a step's log line, then its epoch's
    step = max((r.get("step") or 0 for r in history), default=0)
    best = next((r for r in history if flat.get("best_epoch") is not None and "eval_score" in r
                 and r.get("epoch") == flat["best_epoch"]), None)
    return {"log_history": history, "epoch": flat.get("epoch"), "global_step": step, "max_steps": step,
            "num_train_epochs": args.get("num_epochs"), "train_batch_size": args.get("batch_size"),
            "logging_steps": args.get("log_every_steps"), "best_metric": None if best is None else best["eval_score"],
            "best_global_step": None if best is None else best["step"]}


# ---- the "complete" decision, in one place ---------------------------------------------------------------------
def is_complete(results: dict, args: dict | None = None) -> bool:
    """A run is complete when its results.json says ``"complete": true`` and, given the run's args.json, records
    those very arguments (the run-defining ones: a folder whose args.json was rewritten by another run is not)."""
    if not isinstance(results, dict) or results.get("complete") is not True:
        return False
    return args is None or not differing_args(results.get("args") or {}, args)


def run_status(path) -> str:
    """complete | running (a process holds the folder's lock) | failed (diverged: results.json holds an error) |
    partial | missing."""
    results = read_json(os.path.join(path, RESULTS))
    if is_complete(results):
        return "complete"
    if lock_holder(path):
        return "running"
    if results.get("error"):
        return "failed"
    return "partial" if os.path.isdir(path) and set(os.listdir(path)) - {LOCK} else "missing"


def lock_holder(path) -> str | None:
    """'pid N on host H' when a process holds the run folder's lock (a run writes it now), else None."""
    import fcntl

    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.read(fd, 200).decode(errors="replace").strip() or "another process"
        return None
    finally:
        os.close(fd)


def read_json(path, required=False):
    """A JSON object from ``path`` ({} when absent or unreadable); ``required``: ConfigError unless it is a dict."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict):
        return obj
    if required:
        raise ConfigError(f"{path} is not a JSON object of this program's: pass --overwrite 1 to start over, or "
                          f"choose another --save_name")
    return {}


# args.json keys the scripts read -> the JSON types train.py writes for them (run_problem checks them)
ARG_TYPES = {"task": (str,), "model_name": (str,), "prefix_len": (int,), "seq_len": (int,), "batch_size": (int,),
             "num_epochs": (int,), "prefix_MLP": (str,), "freeze_weights": (int,), "lr": (int, float)}


def run_problem(args: dict, results: dict) -> str | None:
    """Why a finished run's records cannot be vouched for (one phrase), or None: args.json's keys of the wrong
    type, a results.json whose arguments differ from args.json's (two runs mixed in one folder), non-finite or
    non-numeric scores. The one check make_table.py, plot_curves.py, predict.py, export_peft.py and train.py's
    adapter apply to what they read."""
    for key, types in ARG_TYPES.items():
        value = args.get(key)
        if key in args and (not isinstance(value, types) or isinstance(value, bool)):
            return f"args.json holds {key} {value!r} (a {type(value).__name__})"
    if not isinstance(results.get("args", {}), dict):
        return "results.json's args is not an object"
    if not isinstance(results.get("task") or args.get("task"), str):
        return "neither results.json nor args.json names its task"
    history = results.get("validation", [])
    if not isinstance(history, list) or not all(isinstance(e, dict) and isinstance(e.get("epoch"), int)
                                                and _number_or_none(e, "score") and _number_or_none(e, "loss")
                                                for e in history):
        return "results.json's validation is not a list of {epoch, score, loss, ...} entries with finite numbers"
    # norms is null for a run without a prompt (head only, fine-tuning): train.py writes wrapper.norms(), None there
    if not isinstance(results.get("train", {}), dict) or not isinstance(results.get("norms") or {}, dict):
        return "results.json's train or norms is not an object"
    recorded = results.get("args") or {}
    diff = differing_args(recorded, {k: v for k, v in args.items() if k in recorded})
    if diff:
        return f"results.json records other arguments than args.json ({diff[0]})"
    for where, value in (("best_val_score", results.get("best_val_score")),
                         ("test.score", (results.get("test") or {}).get("score")
                          if isinstance(results.get("test") or {}, dict) else "?")):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value)):
            return f"results.json's {where} is {value!r}, not a finite number"
    return None


def _number_or_none(entry: dict, key: str) -> bool:
    value = entry.get(key, "absent")
    return value is None or isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def differing_args(saved: dict, current: dict) -> list[str]:
    """The run-defining arguments whose values differ: '--lr 0.3 (saved) != 0.1 (now)'."""
    keys = sorted((set(saved) | set(current)) - NOT_DEFINING)
    return [f"--{k} {saved.get(k)!r} (saved) != {current.get(k)!r} (now)" for k in keys
            if saved.get(k) != current.get(k)]


# ---- finished runs, for tables and plots ---------------------------------------------------------------------
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

    prefix_len 0 -> "Fine-tuning", or "Head only" when the model is frozen (an encoder's head-only control);
    prefix_MLP None -> "PT" (Lester et al.); a network with the skip connection ->
    "Residual PT (MLP1)"; without it -> "PT + MLP1 (no residual)" (same rule for MLP2, LSTM*, transformer).
    A prompt trained together with model weights adds " + fine-tuning" (--freeze_weights 0) or
    " + 'shared' trained" (--freeze_except shared).
    """
    if int(args.get("prefix_len", 10)) == 0:
        return "Head only" if int(args.get("freeze_weights", 0)) else "Fine-tuning"
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
    """Row order of tables and legends: head only, fine-tuning, PT, Residual PT, other reparameterizations."""
    for i, prefix in enumerate(("No signal", "Head only", "Fine-tuning", "PT", "Residual PT", "PT + ")):
        if label == prefix or (i >= 4 and label.startswith(prefix)) or (i == 0 and label.startswith(prefix)):
            return i, label
    return 6, label


def task_rank(task: str) -> tuple:
    """Column order: the task registry's (GLUE, then SuperGLUE as in the paper), unknown names last."""
    order = list(TASKS)
    return (order.index(task), task) if task in order else (len(order), task)


def find_runs(paths, refused: list | None = None) -> tuple[list[Run], list[str]]:
    """Every run directory under ``paths`` (recursive; a path may be a run directory itself), each once.
    Returns (complete runs sorted by path, paths of incomplete runs: results.json says complete false or is
    unreadable). A complete run whose records cannot be vouched for (run_problem) is neither: it goes to
    ``refused`` as 'path: why' (given a list; else among the incomplete). A missing path raises
    FileNotFoundError."""
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
        args, results = read_json(os.path.join(d, ARGS)), read_json(os.path.join(d, RESULTS))
        if not args or not is_complete(results):
            incomplete.append(d)
            continue
        problem = run_problem(args, results)
        if problem:
            (refused if refused is not None else incomplete).append(f"{d}: {problem}" if refused is not None else d)
            continue
        runs.append(Run(d, args, results))
    return runs, incomplete


def score(run: Run, metric: str) -> float | None:
    """The run's score for --metric (best_val: best_val_score; test: test.score; the norm ratios of METRICS), or
    None where it has none, or none that is a finite number (a table counts in n only what its mean counts)."""
    value = _score(run, metric)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def _score(run: Run, metric: str):
    if metric == "best_val":
        return run.results.get("best_val_score")
    if metric == "wall_time_s":
        return run.results.get("wall_time_s")
    if metric in ("norm_ratio", "branch_ratio"):
        norms = run.results.get("norms") or {}
        num, den = ("projected", "embedding") if metric == "norm_ratio" else ("phi", "prompt")
        try:
            return norms[num] / norms[den] if norms.get(num) is not None and norms.get(den) else None
        except (TypeError, ZeroDivisionError, AttributeError):
            return None
    test = run.results.get("test") or {}
    return test.get("score") if isinstance(test, dict) else None


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


def repeated_seeds(runs: list[Run]) -> dict[tuple, list[str]]:
    """{(seed, data_seed): paths} of the seed pairs that more than one of ``runs`` trained with: pooled, such runs
    are not independent replicates (the same seeds, the same arguments: the same numbers)."""
    by_seed = {}
    for r in runs:
        by_seed.setdefault((r.args.get("seed"), r.args.get("data_seed")), []).append(r.path)
    return {k: v for k, v in by_seed.items() if len(v) > 1}


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
    refused = []
    runs, incomplete = find_runs(paths, refused)
    if refused:
        print(f"{prog}: warning: refused {len(refused)} run(s) whose records cannot be vouched for (fix or retrain "
              f"them): {'; '.join(refused)}", file=sys.stderr)
    if not runs:
        raise ValueError(f"no complete run (a folder with args.json and results.json whose complete is true) "
                         f"under {', '.join(paths)}")
    check_group_by(runs, group_by)
    if incomplete:
        print(f"{prog}: warning: skipped {len(incomplete)} incomplete run(s): {', '.join(incomplete)}",
              file=sys.stderr)
    return runs, group_by
