"""Aggregate finished runs into the paper's kind of table: one row per method, one column per task plus "Avg",
cells = mean ± std over seeds of the score x 100.

    python scripts/make_table.py runs/                                   # best validation score
    python scripts/make_table.py runs/ sweep2/ --metric test --out tables/superglue
    python scripts/make_table.py runs/ --group_by prefix_len,lr          # one row per method and (prefix_len, lr)

Run directories are found recursively (those holding args.json and results.json). Runs that share the method
label, the --group_by values and the task are the seeds of one cell. The score is results.json's
``best_val_score`` (--metric best_val) or ``test.score`` (--metric test, runs made with --get_test_subset 1); it is
the early-stopping score, i.e. the mean of the two metrics where a task has two (cb: accuracy and macro-F1).
std is the sample standard deviation (ddof=1; none for a single seed). "Avg" is the mean of a row's task means
(blank when the row lacks a task). Incomplete runs and runs without the chosen score are skipped with a warning;
a cell that averages runs differing in another argument (say lr) is warned about, naming the --group_by to add.

Prints a markdown table on stdout (warnings go to stderr, so `> table.md` keeps the table only). With --out PREFIX
it also writes PREFIX.csv (one line per cell: method, group values, task, n, mean, std, seeds; unrounded) and
PREFIX.tex (the printed table, via pandas.DataFrame.to_latex); without --out nothing is written.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pandas as pd  # noqa: E402

import run_folder  # noqa: E402

EXIT_BAD_INPUT = 2


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR", help="folders searched recursively for runs")
    p.add_argument("--metric", default="best_val", choices=run_folder.METRICS,
                   help="best_val: results.json best_val_score; test: the test subset's score of the best state")
    p.add_argument("--group_by", default="", help="comma-separated args.json keys that split rows (e.g. lr,prefix_len)")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="also write PREFIX.csv and PREFIX.tex, replacing earlier ones (default: print only)")
    return p


def collect(runs, metric, group_by):
    """One row per usable run: method, group values, task, seed, score x 100, path. Also returns the skipped
    runs (no score for the metric)."""
    rows, no_score = [], []
    for r in runs:
        s = run_folder.score(r, metric)
        if s is None:
            no_score.append(r.path)
            continue
        rows.append({"method": r.method, **{g: r.args.get(g) for g in group_by}, "task": r.task,
                     "seed": r.args.get("seed"), "score": 100.0 * s, "path": r.path})
    return pd.DataFrame(rows), no_score


def aggregate(df, group_by):
    """Cells: mean, sample std (ddof=1) and number of runs per (method, group values, task); plus an "Avg" cell per
    row (the mean of its task means, std NaN), and "seeds" listing the seeds of a cell."""
    keys = ["method", *group_by, "task"]
    cells = (df.groupby(keys, sort=False, dropna=False)
               .agg(n=("score", "size"), mean=("score", "mean"), std=("score", lambda s: s.std(ddof=1)),
                    seeds=("seed", lambda s: ";".join(str(v) for v in sorted(s, key=_value_key))))
               .reset_index())
    tasks = sorted(cells["task"].unique(), key=run_folder.task_rank)
    avg = []
    for values, row in cells.groupby(["method", *group_by], sort=False, dropna=False):
        complete = set(row["task"]) == set(tasks)
        avg.append({**dict(zip(["method", *group_by], values)), "task": "Avg", "n": int(row["n"].min()),
                    "mean": row["mean"].mean() if complete else math.nan, "std": math.nan, "seeds": ""})
    cells = pd.concat([cells, pd.DataFrame(avg)], ignore_index=True)
    order = {t: i for i, t in enumerate(tasks + ["Avg"])}

    def key(i):
        c = cells.loc[i]
        return run_folder.method_rank(c["method"]), [_value_key(c[g]) for g in group_by], order[c["task"]]

    return cells.loc[sorted(cells.index, key=key)].reset_index(drop=True), tasks


def _value_key(v):
    """Numbers in numeric order, then everything else (None, strings) by its text."""
    is_number = isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)
    return (0, v, "") if is_number else (1, 0, str(v))


def display_table(cells, tasks, group_by, show_n):
    """The wide table of strings: "71.4 ± 2.1", with " (n=3)" when cells differ in their number of runs."""
    def fmt(c):
        if math.isnan(c["mean"]):
            return "–"
        text = f"{c['mean']:.1f}" if math.isnan(c["std"]) else f"{c['mean']:.1f} ± {c['std']:.1f}"
        return text + (f" (n={c['n']})" if show_n and c["task"] != "Avg" else "")

    keys = ["method", *group_by]
    rows = {}
    for _, c in cells.iterrows():  # cells come sorted: rows and columns keep that order
        row = rows.setdefault(tuple(c[k] for k in keys), dict(zip(["Method", *group_by], (c[k] for k in keys))))
        row[c["task"]] = fmt(c)
    return pd.DataFrame(list(rows.values()), columns=["Method", *group_by, *tasks, "Avg"]).fillna("–")


def to_markdown(wide):
    head = [str(c) for c in wide.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in wide.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        runs, group_by = run_folder.load_runs(args.runs_dirs, args.group_by, "make_table.py")
        df, no_score = collect(runs, args.metric, group_by)
        if no_score:
            why = "no test score (trained without --get_test_subset 1)" if args.metric == "test" else \
                "no validation score"
            print(f"make_table.py: warning: skipped {len(no_score)} run(s) with {why}: {', '.join(no_score)}",
                  file=sys.stderr)
        if df.empty:
            raise ValueError(f"no run has a {args.metric} score; try --metric best_val")
    except (FileNotFoundError, ValueError) as e:
        print(f"make_table.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    by_path = {r.path: r for r in runs}
    for key, part in df.groupby(["method", *group_by, "task"], sort=False, dropna=False):
        mixed = run_folder.mixed_arguments([by_path[p] for p in part["path"]])
        if mixed:
            what = "; ".join(f"{k} {v}" for k, v in mixed.items())
            print(f"make_table.py: warning: cell {' / '.join(map(str, key))} averages runs that differ in {what}: "
                  f"add --group_by {','.join(mixed)} to split them", file=sys.stderr)

    cells, tasks = aggregate(df, group_by)
    counts = cells.loc[cells["task"] != "Avg", "n"]
    show_n = counts.nunique() > 1
    wide = display_table(cells, tasks, group_by, show_n)
    score_name = "best validation score" if args.metric == "best_val" else "test score (best validation state)"
    note = (f"{score_name} x 100, mean ± sample std (ddof=1) over seeds"
            + ("" if show_n else f", n={counts.iloc[0]} per cell") + "; Avg = mean of the task means")
    print(to_markdown(wide))
    print(f"\n{note}")
    if args.out is None:
        return 0

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    cells.rename(columns={"mean": "mean_x100", "std": "std_x100"}).to_csv(args.out + ".csv", index=False)
    caption = note.replace("±", "$\\pm$").replace(" x 100", " $\\times$ 100")
    latex = wide.to_latex(index=False, escape=True, caption=caption,
                          column_format="l" * (1 + len(group_by)) + "c" * (len(tasks) + 1))
    with open(args.out + ".tex", "w") as f:
        f.write(latex.replace("±", "$\\pm$").replace("–", "--"))
    print(f"wrote {args.out}.csv and {args.out}.tex", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
