"""How fast each method learns: validation score x 100 after given epochs, averaged over seeds, then over tasks.

    python scripts/convergence.py runs/minilm_study --epochs 1,2,3,5,10 --out docs/results/convergence

One row per method (and per --group_by values): the mean over tasks of the per-task seed mean of the validation
score after epoch e (1-based, as the paper counts), then "best epoch" (mean 1-based epoch of the best validation
score). Only tasks that every row has, and runs that reached the last asked epoch, count. Markdown on stdout,
OUT.csv with --out. Exit codes: 0 done, 2 bad input (one line on stderr).
"""
import argparse
import os
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import run_files  # noqa: E402  (no torch: reading runs needs none)
from residual_prompts.errors import EXIT_BAD_INPUT  # noqa: E402



def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR", help="folders searched recursively for runs")
    p.add_argument("--epochs", default="1,2,3,5,10", help="comma-separated 1-based epochs to report")
    p.add_argument("--group_by", default="", help="comma-separated args.json keys that split rows")
    p.add_argument("--out", default=None, help="also write OUT.csv")
    return p


def collect(runs, epochs, group_by):
    """Long frame: method, group values, task, seed, epoch (1-based, or "best epoch"), value. Runs with fewer
    validation entries than max(epochs) are returned separately."""
    rows, short = [], []
    for r in runs:
        curve = [v.get("score") for v in r.results.get("validation", [])]
        if len(curve) < max(epochs) or any(curve[e - 1] is None for e in epochs):
            short.append(r.path)
            continue
        base = {"method": r.method, **{g: r.args.get(g) for g in group_by}, "task": r.task, "seed": r.args.get("seed")}
        rows += [{**base, "column": f"epoch {e}", "value": 100.0 * curve[e - 1]} for e in epochs]
        rows.append({**base, "column": "best epoch", "value": 1.0 + r.results.get("best_epoch", 0)})
    return pd.DataFrame(rows), short


def summarize(df, epochs, group_by):
    keys = ["method", *group_by]
    per_task = df.groupby([*keys, "task", "column"], sort=False, dropna=False)["value"].mean().reset_index()
    common = set.intersection(*(set(t) for _, t in per_task.groupby(keys, sort=False, dropna=False)["task"]))
    per_task = per_task[per_task["task"].isin(common)]
    wide = (per_task.groupby([*keys, "column"], sort=False, dropna=False)["value"].mean()
            .unstack("column").reset_index())
    columns = [f"epoch {e}" for e in epochs] + ["best epoch"]
    wide = wide[[*keys, *columns]]
    wide["tasks"] = len(common)
    wide = wide.sort_values(keys, key=lambda s: s.map(run_files.method_rank) if s.name == "method" else s)
    return wide.reset_index(drop=True)


def to_markdown(wide, group_by):
    head = ["Method", *group_by, *[c for c in wide.columns if c.startswith("epoch")], "best epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in wide.iterrows():
        cells = [row["method"], *[str(row[g]) for g in group_by]]
        cells += [f"{row[c]:.1f}" for c in head[1 + len(group_by):]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        epochs = [int(e) for e in args.epochs.split(",") if e.strip()]
        if not epochs or min(epochs) < 1:
            raise ValueError
    except ValueError:
        print(f"convergence.py: error: --epochs {args.epochs!r} must be comma-separated epochs >= 1, e.g. 1,2,5",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        runs, group_by = run_files.load_runs(args.runs_dirs, args.group_by, "convergence.py")
    except (FileNotFoundError, ValueError) as e:
        print(f"convergence.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    df, short = collect(runs, epochs, group_by)
    if short:
        print(f"convergence.py: warning: skipped {len(short)} run(s) with fewer than {max(epochs)} validated "
              f"epochs: {', '.join(short)}", file=sys.stderr)
    if df.empty:
        print(f"convergence.py: error: no run reached epoch {max(epochs)}: ask for earlier --epochs", file=sys.stderr)
        return EXIT_BAD_INPUT
    wide = summarize(df, epochs, group_by)
    print(to_markdown(wide, group_by))
    print(f"\nvalidation score x 100 after each epoch, mean over seeds then over the {int(wide['tasks'].iloc[0])} "
          f"task(s) every row has; best epoch: mean 1-based epoch of the best validation score")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        wide.to_csv(args.out + ".csv", index=False)
        print(f"wrote {args.out}.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
