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
a cell whose runs differ in another argument (say lr: a swept axis) is refused (exit 2, one line naming the
argument and its values) unless --group_by names it or --pool asks to average across it.

--paired A B replaces the table by paired differences A − B (method labels as in the table, e.g.
"Residual PT (MLP1)" PT): runs of A and B are paired when they share task, seed, data_seed and the --group_by
values (their learning rates may differ: each method at its own chosen lr); per task and over all pairs: n, the mean
difference, its 95% t-interval, the std, the minimum detectable effect at 80% power (two-sided paired t-test, alpha
0.05, from that n and std), wins / ties / losses of A (a tie: |difference| <= --tie_tol) and the sign test's p.
--spread KEY adds, per method and task, how the cell means move across KEY's values (e.g. lr): the best and worst
value (ties: the lowest value), their means, range and std.

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
                   help="best_val: results.json best_val_score; test: the test subset's score of the best state; "
                        "norm_ratio, branch_ratio: prompt norm ratios (results.json norms); wall_time_s: seconds")
    p.add_argument("--group_by", default="", help="comma-separated args.json keys that split rows (e.g. lr,prefix_len)")
    p.add_argument("--paired", nargs=2, metavar=("A", "B"), default=None,
                   help="print paired differences A - B (method labels) per task instead of the table")
    p.add_argument("--tie_tol", type=float, default=0.0, metavar="POINTS",
                   help="with --paired: a difference within +-POINTS (x 100 scale) counts as a tie (default 0: exact)")
    p.add_argument("--spread", default=None, metavar="KEY",
                   help="also print, per method and task, the spread of the cell means across KEY (a --group_by key)")
    p.add_argument("--baseline", action="store_true",
                   help="with --metric test: add a row 'No signal (constant)': per task, results.json's "
                        "test.constant_score (the best one-label prediction of each test half) over the runs' halves")
    p.add_argument("--pool", action="store_true",
                   help="average a cell's runs even where they differ in an argument other than the seeds (say lr); "
                        "without it make_table.py refuses (exit 2) and names the --group_by to add")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="also write PREFIX.csv and PREFIX.tex, replacing earlier ones (default: print only)")
    return p


def scale(metric):
    return 100.0 if metric in run_folder.SCORE_METRICS else 1.0


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
                     "seed": r.args.get("seed"), "score": scale(metric) * s, "path": r.path})
    return pd.DataFrame(rows), no_score


BASELINE = "No signal (constant)"


def baseline_rows(runs, group_by):
    """One row per (task, data_seed) test half: what predicting one label for every row scores there x 100."""
    rows, seen = [], set()
    for r in runs:
        value = (r.results.get("test") or {}).get("constant_score")
        key = (r.task, r.args.get("data_seed"), r.args.get("limit_val_set"), r.args.get("get_test_subset"))
        if value is None or key in seen:
            continue
        seen.add(key)
        rows.append({"method": BASELINE, **{g: None for g in group_by}, "task": r.task,
                     "seed": r.args.get("data_seed"), "score": 100.0 * value, "path": r.path})
    return pd.DataFrame(rows)


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


def display_table(cells, tasks, group_by, show_n, digits=1):
    """The wide table of strings: "71.4 ± 2.1", with " (n=3)" when cells differ in their number of runs."""
    def fmt(c):
        if math.isnan(c["mean"]):
            return "–"
        text = (f"{c['mean']:.{digits}f}" if math.isnan(c["std"])
                else f"{c['mean']:.{digits}f} ± {c['std']:.{digits}f}")
        return text + (f" (n={c['n']})" if show_n and c["task"] != "Avg" else "")

    keys = ["method", *group_by]
    rows = {}
    for _, c in cells.iterrows():  # cells come sorted: rows and columns keep that order
        values = tuple(None if pd.isna(c[k]) else c[k] for k in keys)  # NaN != NaN: the baseline's blank groups
        row = rows.setdefault(values, dict(zip(["Method", *group_by], values)))
        row[c["task"]] = fmt(c)
    return pd.DataFrame(list(rows.values()), columns=["Method", *group_by, *tasks, "Avg"], dtype=object).fillna("–")


def paired(df, runs, a, b, group_by, tie_tol=0.0):
    """Rows of paired differences A − B (x 100): per task, then "All" over every pair."""
    by_path = {r.path: r for r in runs}
    labels = set(df["method"])
    for m in (a, b):
        if m not in labels:
            raise ValueError(f"--paired: no run of method {m!r}; methods here: {', '.join(sorted(labels))}")
    keys = ["task", *group_by, "seed", "data_seed"]
    df = df.assign(data_seed=[by_path[p].args.get("data_seed") for p in df["path"]])
    sides = []
    for m in (a, b):
        side = df[df["method"] == m]
        twice = side[side.duplicated(keys, keep=False)]
        if len(twice):
            raise ValueError(f"--paired: method {m!r} has several runs for {', '.join(keys)} = "
                             f"{tuple(twice.iloc[0][keys])} (e.g. {', '.join(twice['path'][:2])}): "
                             f"add the key that tells them apart to --group_by")
        sides.append(side.set_index(keys)["score"])
    diff = (sides[0] - sides[1]).dropna().reset_index(name="diff")
    if diff.empty:
        raise ValueError(f"--paired: no run of {a!r} has a partner of {b!r} with the same {', '.join(keys)}")
    rows = []
    for key, part in diff.groupby(["task", *group_by], sort=False):  # one row per task (and --group_by values)
        key = key if isinstance(key, tuple) else (key,)
        label = key[0] + "".join(f", {g} {_text(v)}" for g, v in zip(group_by, key[1:]))
        rows.append({**_diff_row(label, part["diff"], tie_tol), "_order": (run_folder.task_rank(key[0]),
                                                                  [_value_key(v) for v in key[1:]])})
    rows = [{k: v for k, v in r.items() if k != "_order"} for r in sorted(rows, key=lambda r: r["_order"])]
    return pd.DataFrame(rows + [_diff_row("All", diff["diff"], tie_tol)])


def _text(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def mde(n, std, alpha=0.05, power=0.8):
    """Minimum detectable effect of a two-sided paired t-test at level ``alpha`` with ``n`` pairs whose
    differences have standard deviation ``std``: the true mean difference that the test detects with probability
    ``power`` (noncentral t, df = n - 1, noncentrality = effect * sqrt(n) / std). nan for n < 2 or std = 0."""
    from scipy import optimize, stats
    if n < 2 or not std > 0:
        return math.nan
    df, crit = n - 1, float(stats.t.ppf(1 - alpha / 2, n - 1))

    def shortfall(effect):
        nc = effect * math.sqrt(n) / std
        far = float(stats.nct.sf(crit, df, -nc))  # = P(T < -crit): the other tail (scipy's cdf there can be nan)
        return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(far) else far) - power
    hi = std
    while shortfall(hi) < 0:  # power grows with the effect: double until it reaches ``power``
        hi *= 2
    return float(optimize.brentq(shortfall, 0.0, hi, xtol=1e-9 * std))


def _diff_row(task, d, tie_tol=0.0):
    from scipy import stats
    n, mean = len(d), float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return {"task": task, "n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "std": std,
            "mde80": mde(n, std), "wins": int((d > tie_tol).sum()), "ties": int((d.abs() <= tie_tol).sum()),
            "losses": int((d < -tie_tol).sum()), "sign_p": _sign_p(int((d > tie_tol).sum()), int((d < -tie_tol).sum()))}


def _sign_p(wins, losses):
    """Two-sided exact sign test of wins against losses (ties left out); nan without either."""
    from scipy import stats
    return float(stats.binomtest(wins, wins + losses).pvalue) if wins + losses else math.nan


def paired_markdown(rows, a, b):
    def num(v):
        return "–" if math.isnan(v) else f"{v:+.1f}"
    wide = pd.DataFrame({"task": rows["task"], "pairs": rows["n"], f"{a} − {b}": rows["mean"].map(num),
                         "95% CI": [f"[{num(lo)}, {num(hi)}]" for lo, hi in zip(rows["lo"], rows["hi"])],
                         "std": rows["std"].map(lambda v: "–" if math.isnan(v) else f"{v:.1f}"),
                         "MDE (80%)": rows["mde80"].map(lambda v: "–" if math.isnan(v) else f"{v:.1f}"),
                         "wins / ties / losses": [f"{w} / {t} / {l}" for w, t, l in
                                                  zip(rows["wins"], rows["ties"], rows["losses"])],
                         "sign test p": rows["sign_p"].map(lambda v: "–" if math.isnan(v) else f"{v:.2f}")})
    return to_markdown(wide)


def spread(cells, key):
    """Per method and task: how the cell means move across the values of ``key``."""
    rows = []
    for (method, task), part in cells[cells["task"] != "Avg"].groupby(["method", "task"], sort=False):
        part = part.dropna(subset=["mean"])
        means = part["mean"].round(6)  # float noise must not break a tie: ties go to the first value (the lowest)
        best, worst = part.loc[means.idxmax()], part.loc[means.idxmin()]
        rows.append({"Method": method, "task": task, f"best {key}": best[key], "best": f"{best['mean']:.1f}",
                     f"worst {key}": worst[key], "worst": f"{worst['mean']:.1f}",
                     "range": f"{best['mean'] - worst['mean']:.1f}",
                     f"std across {key}": f"{part['mean'].std(ddof=1):.1f}" if len(part) > 1 else "–",
                     "values": len(part)})
    return pd.DataFrame(rows)


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
            why = {"test": "no test score (trained without --get_test_subset 1)", "best_val": "no validation score"}.get(
                args.metric, "no prompt norms (no prompt, or made before results.json recorded them)")
            print(f"make_table.py: warning: skipped {len(no_score)} run(s) with {why}: {', '.join(no_score)}",
                  file=sys.stderr)
        if df.empty:
            raise ValueError(f"no run has a {args.metric} value; try --metric best_val")
    except (FileNotFoundError, ValueError) as e:
        print(f"make_table.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    by_path = {r.path: r for r in runs}
    if args.baseline:
        if args.metric != "test" or args.paired:
            print("make_table.py: error: --baseline goes with --metric test and the table (not --paired)",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        base = baseline_rows(runs, group_by)
        if base.empty:
            print("make_table.py: warning: --baseline: no run records test.constant_score (runs made before it "
                  "existed)", file=sys.stderr)
        df = pd.concat([base, df], ignore_index=True)
    if args.spread and args.spread not in group_by:
        print(f"make_table.py: error: --spread {args.spread} needs --group_by {args.spread}", file=sys.stderr)
        return EXIT_BAD_INPUT
    pooled = {}  # argument -> number of cells that average across it (with --pool)
    for key, part in df[df["method"] != BASELINE].groupby(["method", *group_by, "task"], sort=False, dropna=False):
        mixed = run_folder.mixed_arguments([by_path[p] for p in part["path"]])
        if mixed:  # a cell would average across an argument the runs were swept over: refuse unless asked to pool
            what = " and ".join(f"{k} ({', '.join(map(_text, v))})" for k, v in mixed.items())
            cell = " / ".join(map(str, key))
            if not args.pool:
                print(f"make_table.py: error: runs of cell {cell} differ in {what}: pass --group_by "
                      f"{','.join(mixed)}, or --pool to average across {'it' if len(mixed) == 1 else 'them'}",
                      file=sys.stderr)
                return EXIT_BAD_INPUT
            for k in mixed:
                pooled[k] = pooled.get(k, 0) + 1
    if pooled:
        print("make_table.py: warning: --pool: cells average runs that differ in "
              + ", ".join(f"{k} ({n} cell{'s' * (n > 1)})" for k, n in sorted(pooled.items())), file=sys.stderr)

    score_name = {"best_val": "best validation score x 100", "test": "test score (best validation state) x 100",
                  "norm_ratio": "||phi(P)|| / ||e|| (mean row norms: projected prompt over vocabulary)",
                  "branch_ratio": "||phi(P) - P|| / ||P|| (mean row norms: what the network adds over the raw prompt)",
                  "wall_time_s": "wall time of the run in seconds (results.json wall_time_s)"}[args.metric]
    if args.paired:
        try:
            rows = paired(df, runs, *args.paired, group_by, args.tie_tol)
        except ValueError as e:
            print(f"make_table.py: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(paired_markdown(rows, *args.paired))
        print(f"\npaired difference of the {score_name} ({args.paired[0]} minus {args.paired[1]}, runs paired "
              f"on task, seed, data_seed{''.join(', ' + g for g in group_by)}); 95% CI: mean ± t(0.975, n-1) · std "
              f"/ sqrt(n); MDE (80%): the true mean difference a two-sided paired t-test at alpha 0.05 detects with "
              f"probability 0.8, given these n and std; a tie: |difference| <= {_text(args.tie_tol)}; sign test: "
              f"exact two-sided binomial test of wins against losses; All pools every pair as independent")
        return _write(rows, None, args.out, None, 0)
    cells, tasks = aggregate(df, group_by)
    counts = cells.loc[cells["task"] != "Avg", "n"]
    show_n = counts.nunique() > 1
    digits = 1 if args.metric in run_folder.SCORE_METRICS else 0 if args.metric == "wall_time_s" else 2
    wide = display_table(cells, tasks, group_by, show_n, digits)
    note = (f"{score_name}, mean ± sample std (ddof=1) over seeds"
            + ("" if show_n else f", n={counts.iloc[0]} per cell") + "; Avg = mean of the task means")
    print(to_markdown(wide))
    print(f"\n{note}")
    if args.spread:
        print("\n" + to_markdown(spread(cells, args.spread)))
        print(f"\nper method and task: the {args.spread} with the best and the worst mean {score_name} over "
              f"seeds; range = best - worst; std across the {args.spread} values of those means")
    return _write(cells.rename(columns={"mean": "mean_x100", "std": "std_x100"}), wide, args.out,
                  note, len(group_by) + 1, len(tasks) + 1)


def _write(table, wide, prefix, note, left, right=0):
    """PREFIX.csv (unrounded) and, for the main table, PREFIX.tex; nothing without --out."""
    if prefix is None:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    table.to_csv(prefix + ".csv", index=False)
    if wide is None:
        print(f"wrote {prefix}.csv", file=sys.stderr)
        return 0
    caption = note.replace("±", "$\\pm$").replace(" x 100", " $\\times$ 100")
    latex = wide.to_latex(index=False, escape=True, caption=caption, column_format="l" * left + "c" * right)
    with open(prefix + ".tex", "w") as f:
        f.write(latex.replace("±", "$\\pm$").replace("–", "--"))
    print(f"wrote {prefix}.csv and {prefix}.tex", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
