"""Score or use a finished run without training: its best prompt (and reparameterization, head) on a split of its
task, or on a file of new inputs.

    python scripts/predict.py RUN_DIR                         # the run's validation split: scores + predictions
    python scripts/predict.py RUN_DIR --split train           # another split of the same task (train, validation)
    python scripts/predict.py RUN_DIR --input rows.jsonl      # new rows, in the task's Hugging Face fields
    python scripts/predict.py RUN_DIR --out preds.jsonl       # where the predictions go (default: stdout)

The data, model and sequence length are the run's (args.json); --data_dir and --model_name override where they
moved. Rows of --input are jsonl objects with the task's fields (e.g. cb: premise, hypothesis; a label when known:
then the scores are printed too). Exit codes: 0 done, 2 bad input (one line on stderr).
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
    p.add_argument("--split", default=None, choices=["train", "validation"], help="default: validation")
    p.add_argument("--input", default=None, help="jsonl of new rows in the task's fields (instead of --split)")
    p.add_argument("--out", default=None, help="predictions jsonl to write (default: stdout)")
    p.add_argument("--data_dir", default=None, help="override the run's --data_dir")
    p.add_argument("--model_name", default=None, help="override the run's --model_name")
    p.add_argument("--batch_size", type=int, default=32)
    a = p.parse_args(argv)
    problem = _check_cli(a)
    if problem:
        print(f"predict.py: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    a.split = a.split or "validation"

    import data_utils
    import run_folder
    import train_utils as tu
    from residual_prompts.errors import ConfigError, DataError

    try:
        wrapper, args, _ = run_folder.load_run(a.run_dir, a.model_name)
        task = data_utils.get_task(args["task"])
        rows = _rows(a, task, args, data_utils)
        split = wrapper.encode_split(task, rows, wrapper.tokenizer, args["seq_len"])
        labelled = not any(r.get("_unlabelled") for r in rows)
        res = tu.evaluate(wrapper, split, task, batch_size=a.batch_size, loss_batch_size=args["batch_size"])
    except (ConfigError, DataError, OSError) as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    lines = "".join(json.dumps(data_utils.prediction_record(task, row, pred, with_target=labelled)) + "\n"
                    for row, pred in zip(rows, res["predictions"]))
    if a.out:
        try:
            run_folder.atomic_write(a.out, lambda f: f.write(lines.encode()))
        except OSError as e:
            print(f"predict.py: error: cannot write --out {a.out}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        sys.stdout.write(lines)
    if labelled:
        print(f"predict.py: {task.name} {len(rows)} rows: score {res['score']:.4f} official {res['official']} "
              f"loss {res['loss']:.4f}", file=sys.stderr)
    return 0


def _check_cli(a):
    """The flags' problems that need no data or model: a one-line message, or None."""
    if a.input is not None and a.split is not None:
        return "--split and --input are exclusive: --split scores a split of the run's task, --input new rows"
    if a.input is not None and not os.path.isfile(a.input):  # a FIFO or device too: reading it could block
        what = "not a regular file" if os.path.exists(a.input) else "no such file"
        return f"--input {a.input}: {what}: pass a jsonl file of rows in the task's fields"
    if a.batch_size < 1:
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
    from residual_prompts.errors import DataError

    if a.input is None:
        return data_utils.load_split(task, a.split, a.data_dir or args.get("data_dir"))
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
    return rows


if __name__ == "__main__":
    sys.exit(main())
