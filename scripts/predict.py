"""Score or use a finished run without training: its best prompt (and reparameterization, head) on a split of its
task, or on a file of new inputs.

    python scripts/predict.py RUN_DIR                         # the rows the run validated on: scores + predictions
    python scripts/predict.py RUN_DIR --split test            # the run's test half (a --get_test_subset 1 run)
    python scripts/predict.py RUN_DIR --split validation      # the whole validation file (or train)
    python scripts/predict.py RUN_DIR --input rows.jsonl      # new rows, in the task's Hugging Face fields
    python scripts/predict.py RUN_DIR --out preds.jsonl       # where the predictions go (default: stdout)

--split val and test are exactly the rows the run scored (train.py's split of validation into halves, its
--limit_val_set and --data_seed), evaluated as the run evaluated them: the scores are results.json's (val: the best
state's validation, test: test.score) and the lines those of predictions_{val,test}.jsonl. train and validation
are the task's whole files. The data, model and sequence length are the run's (args.json); --data_dir and
--model_name override where they moved. Rows of --input are jsonl objects with the task's fields (e.g. cb:
premise, hypothesis) and, where known, a label: every row is predicted, the labelled ones are scored (the count is
printed). Exit codes: 0 done, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from residual_prompts.errors import EXIT_BAD_INPUT  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished run folder (save_dir/save_name of train.py)")
    p.add_argument("--split", default=None, choices=["val", "test", "train", "validation"],
                   help="val / test: the rows the run validated / tested on; train / validation: the whole files "
                        "(default: val)")
    p.add_argument("--input", default=None, help="jsonl of new rows in the task's fields (instead of --split)")
    p.add_argument("--out", default=None, help="predictions jsonl to write (default: stdout)")
    p.add_argument("--data_dir", default=None, help="override the run's --data_dir")
    p.add_argument("--model_name", default=None, help="override the run's --model_name")
    p.add_argument("--batch_size", type=int, default=None,
                   help="evaluation batch size (default: the run's --eval_batch_size; scores do not depend on it)")
    a = p.parse_args(argv)
    problem = _check_cli(a)
    if problem:
        print(f"predict.py: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    a.split = a.split or "val"

    import data_utils
    import run_folder
    import train_utils as tu
    from residual_prompts.errors import ConfigError, DataError

    try:
        wrapper, args, _ = run_folder.load_run(a.run_dir, a.model_name)
        task = data_utils.get_task(args["task"])
        rows, groups = _rows(a, task, args, data_utils)
        labelled = [i for i, r in enumerate(rows) if not r.get("_unlabelled")]
        predictions, res = _predict(wrapper, task, args, rows, labelled, groups, a.batch_size, tu)
    except (ConfigError, DataError, OSError) as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    scored = set(labelled)
    lines = "".join(json.dumps(data_utils.prediction_record(task, row, pred, with_target=i in scored)) + "\n"
                    for i, (row, pred) in enumerate(zip(rows, predictions)))
    if a.out:
        try:
            run_folder.atomic_write(a.out, lambda f: f.write(lines.encode()))
        except OSError as e:
            print(f"predict.py: error: cannot write --out {a.out}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        sys.stdout.write(lines)
    what = f"{a.split} split" if a.input is None else a.input
    unscored = (f"; {len(rows) - len(labelled)} without a label: predicted, not scored"
                if len(labelled) < len(rows) else "")
    if res is None:
        print(f"predict.py: {task.name} {what}: {len(rows)} rows predicted, none has a label: no score",
              file=sys.stderr)
    else:
        print(f"predict.py: {task.name} {what}: {len(labelled)} labelled rows scored{unscored}: score "  # exact
              f"{res['score']} {data_utils.hf_metrics(res['official'])} eval_loss {res['loss']}", file=sys.stderr)
    return 0


def _predict(wrapper, task, args, rows, labelled, groups, batch_size, tu):
    """(predictions of every row, the evaluation of the labelled rows or None), evaluated as train.py evaluates:
    its evaluation batch size, loss batches and padding (``groups``: the split's question groups)."""
    kwargs = dict(batch_size=batch_size or args.get("eval_batch_size") or 4 * args["batch_size"],
                  loss_batch_size=args["batch_size"], pad_to=args["seq_len"] if args.get("pad_to_max_length") else None)

    def run(part, g=(None, None)):
        split = wrapper.encode_split(task, part, wrapper.tokenizer, args["seq_len"], *g)
        return tu.evaluate(wrapper, split, task, **kwargs)

    if len(labelled) == len(rows):
        res = run(rows, groups)
        return res["predictions"], res
    predictions = run(rows)["predictions"]  # the stand-in targets of unlabelled rows are never scored
    return predictions, (run([rows[i] for i in labelled]) if labelled else None)


def _check_cli(a):
    """The flags' problems that need no data or model: a one-line message, or None."""
    if a.input is not None and a.split is not None:
        return "--split and --input are exclusive: --split scores a split of the run's task, --input new rows"
    if a.input is not None and not os.path.isfile(a.input):  # a FIFO or device too: reading it could block
        what = "not a regular file" if os.path.exists(a.input) else "no such file"
        return f"--input {a.input}: {what}: pass a jsonl file of rows in the task's fields"
    if a.batch_size is not None and a.batch_size < 1:
        return f"--batch_size {a.batch_size}: pass a positive number of rows"
    if a.out:
        parent = os.path.dirname(os.path.abspath(a.out))
        if os.path.isdir(a.out):
            return f"--out {a.out} is a folder: pass a file path, e.g. {os.path.join(a.out, 'predictions.jsonl')}"
        if os.path.islink(a.out) or os.path.lexists(a.out) and not os.path.isfile(a.out):
            return (f"--out {a.out} is a symbolic link or not a regular file (writing would replace the link, or "
                    f"block on a FIFO): pass a plain file path")
        if not os.path.isdir(parent):
            return f"--out {a.out}: the folder {parent} does not exist: create it or choose another path"
    return None


def _rows(a, task, args, data_utils):
    """(rows, (question groups, official question groups)) of --split or --input."""
    from residual_prompts.errors import DataError

    data_dir = a.data_dir or args.get("data_dir")
    if a.input is None and a.split in ("val", "test"):
        return _run_split(a.split, task, args, data_dir, data_utils)
    if a.input is None:
        return data_utils.load_split(task, a.split, data_dir), (None, None)
    rows = []
    with open(a.input, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{a.input} line {n}: not JSON ({e})") from None
                row.setdefault("idx", n - 1)
                if "label" in row:
                    row["label"] = data_utils.label_id(task, row["label"], f"{a.input} line {n}")
                elif task.formatter != "record":
                    row["label"], row["_unlabelled"] = (0 if task.label_names else 0.0), True  # a stand-in target
                rows.append(data_utils.check_row(task, row, f"{a.input} line {n}"))
    if not rows:
        raise DataError(f"{a.input} holds no rows")
    return rows, (None, None)


def _run_split(split, task, args, data_dir, data_utils):
    """The rows the run scored as ``split`` (val, test), made as train.py made them (build_splits with the run's
    arguments; the training file is not read)."""
    from residual_prompts.errors import ConfigError

    if split == "test" and not args.get("get_test_subset"):
        raise ConfigError("--split test: this run has no test half (it trained without --get_test_subset 1): use "
                          "--split val, or --split validation for the whole validation file")

    def loader(t, name, d):
        return [] if name == "train" else data_utils.load_split(t, name, d)

    splits = data_utils.build_splits(task, data_dir, args.get("select_k_per_class", -1),
                                     bool(args.get("get_test_subset")), args.get("limit_val_set", -1),
                                     args.get("data_seed", 0), loader=loader)
    return splits[split], (splits[f"{split}_groups"], splits[f"{split}_official_groups"])


if __name__ == "__main__":
    sys.exit(main())
