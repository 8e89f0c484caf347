"""Plot finished runs: validation curves per method, and score against learning rate.

    python scripts/plot_curves.py runs/ --out plots/
    python scripts/plot_curves.py runs/ --out plots/ --group_by prefix_len --metric test --format pdf

Writes into --out (--format png at 300 dpi, pdf or svg; --figures picks which):
  val_curves.png   per task its validation score x 100 (the y-axis names it: accuracy, Matthews correlation,
                   Pearson correlation, mean of accuracy and macro-F1...) over the validation loss, against the
                   epoch as the logs count it (1 = after the first epoch, as metrics.jsonl); five tasks per row,
                   then wrapping; per method a line for the mean over seeds and a band (--band: ± the sample std,
                   ddof=1, or ± its standard error; no band for a single seed; at an epoch that only some seeds
                   reached, the mean of those)
  score_vs_lr.png  only when runs of one method and task differ in --lr: the score (--metric: best_val or test)
                   x 100 against lr on a log axis whose ticks are the rates tried (labelled as written: 0.001,
                   0.3, 10), mean and band over seeds, one panel per task
The legend's title says what line and band are and what each line pools: N seeds (runs that differ only in
--seed/--data_seed), with N or its range, and with --pool the other arguments averaged across. A line whose runs
differ in another argument (a swept one, say lr or prefix_len) is refused (exit 2, naming it and its values), as in
scripts/make_table.py: add it to --group_by, or pass --pool to average across it (score_vs_lr.png's x axis is lr:
lr is never pooled there). Runs are found and labelled as in make_table.py (incomplete runs are skipped with a
warning; so are, for score_vs_lr.png, runs without the chosen score). Exit codes: 0 done, 2 bad input (one line on
stderr).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import run_files  # noqa: E402  (no torch: reading runs needs none)
from residual_prompts.errors import EXIT_BAD_INPUT  # noqa: E402
from residual_prompts.metrics import score_name  # noqa: E402
from residual_prompts.tasks import TASKS  # noqa: E402

FIGURES = ("val_curves", "score_vs_lr")
LEGEND_INCHES = 3.4  # the legend's column right of the panels (constrained layout: no gap, no overlap)
STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (5, 1, 1, 1)), "v")]  # per line: dash and marker



def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR", help="folders searched recursively for runs")
    p.add_argument("--out", required=True, help="output folder for the figures")
    p.add_argument("--metric", default="best_val", choices=run_files.METRICS, help="the score of score_vs_lr")
    p.add_argument("--group_by", default="", help="comma-separated args.json keys that split methods (as make_table)")
    p.add_argument("--pool", action="store_true",
                   help="average a line's runs even where they differ in an argument other than the seeds (say "
                        "lr); the legend says what was pooled. Without it such a line is refused (exit 2)")
    p.add_argument("--format", default="png", choices=["png", "pdf", "svg"], help="png (300 dpi), pdf or svg")
    p.add_argument("--figures", default=",".join(FIGURES),
                   help=f"comma-separated figures to write: {', '.join(FIGURES)} (default: both)")
    p.add_argument("--band", default="std", choices=["std", "sem", "none"],
                   help="the band around each mean: ± the sample std over seeds (std), ± its standard error "
                        "(sem = std / sqrt(n)), or none (default: std)")
    return p


def series_label(run, group_by):
    return run.method + "".join(f", {g}={run.args.get(g)}" for g in group_by)


def curves_frame(runs, group_by):
    """One row per (run, evaluation): label, task, epoch (as the logs count it: 1 = after the first epoch;
    results.json counts its validations from 0), score x 100, loss."""
    return pd.DataFrame([{"label": series_label(r, group_by), "method": r.method, "task": r.task, "path": r.path,
                          "epoch": e["epoch"] + 1, "score": _x100(e["score"]), "loss": _float(e["loss"])}
                         for r in runs for e in r.results.get("validation", [])])


def _float(v):  # results.json writes NaN and inf as null
    return math.nan if v is None else float(v)


def _x100(v):
    return 100.0 * _float(v)


def lr_frame(runs, metric, group_by):
    """One row per run with a score for ``metric``: label (without lr), task, lr, score x 100; plus the paths of
    the runs without that score."""
    group_by = [g for g in group_by if g != "lr"]
    scored = [(r, run_files.score(r, metric)) for r in runs]
    df = pd.DataFrame([{"label": series_label(r, group_by), "method": r.method, "task": r.task, "lr": r.args["lr"],
                        "score": 100.0 * s} for r, s in scored if s is not None])
    return df, [r.path for r, s in scored if s is None]


def pooled_arguments(runs, group_by, axis=None) -> dict:
    """{argument: its values} that some line would average across (runs of one label and task differing in an
    argument other than the seeds, the --group_by keys and ``axis``, the figure's x axis)."""
    lines, pooled = {}, {}
    for r in runs:
        lines.setdefault((series_label(r, [g for g in group_by if g != axis]), r.task), []).append(r)
    for part in lines.values():
        for k, values in run_files.mixed_arguments(part).items():
            if k != axis:
                pooled.setdefault(k, set()).update(json.dumps(v) for v in values)
    out = {}
    for k, texts in sorted(pooled.items()):
        values = [json.loads(v) for v in texts]
        try:
            out[k] = sorted(values)
        except TypeError:  # values of mixed types: as found
            out[k] = values
    return out


def mean_std(df, by, columns):
    """mean and sample std (ddof=1, NaN for one run) of ``columns`` per ``by``."""
    g = df.groupby(by, sort=True)
    out = g[columns].mean().add_suffix("_mean").join(g[columns].std(ddof=1).add_suffix("_std"))
    return out.join(g.size().rename("n")).reset_index()


def _labels_in_order(df):
    methods = dict(zip(df["label"], df["method"]))
    return sorted(methods, key=lambda lab: (run_files.method_rank(methods[lab]), lab))


def _band(ax, x, mean, std, n, style, label, band="std", log=False):
    """The mean as a line (its own colour, dash and marker) and the band, light enough that 3-4 overlapping
    bands stay readable, with its edges drawn thin in the line's dash."""
    (dash, marker), color = style
    line, = ax.plot(x, mean, marker=marker, ms=3.5, lw=1.6, ls=dash, color=color, label=label, zorder=3)
    if band != "none":
        half = std.fillna(0) / (n.clip(lower=1) ** 0.5 if band == "sem" else 1)
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.10, lw=0, zorder=1)
        for edge in (mean - half, mean + half):
            ax.plot(x, edge, color=color, lw=0.6, ls=dash, alpha=0.6, zorder=2)
    if log:
        ax.set_xscale("log")


def _styles(labels):
    return {lab: (STYLES[i % len(STYLES)], f"C{i % 10}") for i, lab in enumerate(labels)}


def _save(fig, path):
    fig.savefig(path, dpi=300, bbox_inches="tight")  # dpi: the PNG's; pdf and svg are vector
    plt.close(fig)


def plot_curves(df, tasks, path, per_row=5, band="std", pooled=None):
    fig, stats = curves_figure(df, tasks, per_row, band, pooled)
    _save(fig, path)
    return stats


def curves_figure(df, tasks, per_row=5, band="std", pooled=None):
    """(figure, stats) of val_curves: per task a score panel over a loss panel; more than ``per_row`` tasks
    wrap onto further pairs of rows."""
    labels = _labels_in_order(df)
    styles = _styles(labels)
    stats = mean_std(df, ["label", "task", "epoch"], ["score", "loss"])
    ncol = min(per_row, len(tasks))
    bands = -(-len(tasks) // ncol)
    fig, axes = plt.subplots(2 * bands, ncol, figsize=(3.6 * ncol + LEGEND_INCHES, 5.6 * bands), squeeze=False,
                             layout="constrained")
    for j in range(bands * ncol):
        top, bottom = axes[2 * (j // ncol), j % ncol], axes[2 * (j // ncol) + 1, j % ncol]
        if j >= len(tasks):
            top.set_visible(False)
            bottom.set_visible(False)
            continue
        task = tasks[j]
        for lab in labels:
            s = stats[(stats["label"] == lab) & (stats["task"] == task)]
            if s.empty:
                continue
            _band(top, s["epoch"], s["score_mean"], s["score_std"], s["n"], styles[lab], lab, band)
            _band(bottom, s["epoch"], s["loss_mean"], s["loss_std"], s["n"], styles[lab], lab, band)
        top.set_title(task)
        top.set_ylabel(f"{_metric(task)} x 100")  # the loss below says validation
        bottom.set_xlabel("epoch (1 = after the first)")
        bottom.set_ylabel("validation loss")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(fig, axes, _band_title(stats["n"], band, pooled))
    return fig, stats


def _metric(task):
    """The task's score in words (the y-axis), or "score" for a task this registry does not know."""
    return score_name(TASKS[task]) if task in TASKS else "score"


def plot_lr(df, tasks, metric, path, band="std", pooled=None):
    fig, stats = lr_figure(df, tasks, metric, band, pooled)
    _save(fig, path)
    return stats


def lr_figure(df, tasks, metric, band="std", pooled=None):
    """(figure, stats) of score_vs_lr: per task a panel, x = lr on a log axis ticked at the rates tried."""
    labels = _labels_in_order(df)
    styles = _styles(labels)
    stats = mean_std(df, ["label", "task", "lr"], ["score"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.8 * len(tasks) + LEGEND_INCHES, 3.4), squeeze=False,
                             layout="constrained")
    for j, task in enumerate(tasks):
        ax = axes[0, j]
        for lab in labels:
            s = stats[(stats["label"] == lab) & (stats["task"] == task)]
            if not s.empty:
                _band(ax, s["lr"], s["score_mean"], s["score_std"], s["n"], styles[lab], lab, band, log=True)
        rates = sorted(stats.loc[stats["task"] == task, "lr"].unique())
        if rates:
            _rate_ticks(ax, rates)
        ax.set_title(task)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(("best validation " if metric == "best_val" else "test ") + f"{_metric(task)}\nx 100")
        ax.grid(alpha=0.3)
    _legend(fig, axes, _band_title(stats["n"], band, pooled))
    return fig, stats


def _rate_ticks(ax, rates, axes_inches=3.4):
    """Ticks at the tried rates only, labelled as written (0.3, not 3x10^-1); no minor ticks or labels, which
    matplotlib would otherwise put at 2..9 x 10^k and overlap when the rates span a decade or less. Labels that
    would crowd one another are slanted."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(rates))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(rates) > 1:
        span = math.log10(rates[-1] / rates[0]) * 1.1  # the axis margins
        # inches between neighbouring tick centres against the half-widths of their labels (~0.09 in a character)
        if any(math.log10(b / a) / span * axes_inches < 0.045 * (len(f"{a:g}") + len(f"{b:g}")) + 0.1
               for a, b in zip(rates, rates[1:])):
            ax.tick_params(axis="x", labelrotation=45)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
    if len(rates) == 1:  # one rate: a log axis of one point; keep a decade around it
        ax.set_xlim(rates[0] / 3, rates[0] * 3)


def _band_title(n, band="std", pooled=None):
    """What the line and the band of a plot are, with the number of seeds behind them and what else was pooled."""
    n = n.dropna().astype(int)
    lo, hi = (int(n.min()), int(n.max())) if len(n) else (1, 1)
    also = "".join(f"\npooled across {k}: {', '.join(map(str, v))}" for k, v in (pooled or {}).items())
    if hi <= 1:
        return f"one {'run' if pooled else 'seed'} per line: no band" + also
    unit = f"runs (seeds and the pooled {', '.join(pooled)})" if pooled else "seeds (seed, data_seed)"
    count = f"{hi}" if lo == hi else f"{lo}–{hi}"
    what = {"std": "± sample std (ddof=1)", "sem": "± standard error (std / √n)", "none": None}[band]
    text = f"line: mean over {count} {unit}"
    if what:
        text += f"\nband: {what}" + ("\n(one seed: no band)" if lo == 1 else "")
    return text + also


def _legend(fig, axes, title=None):
    handles, names = {}, []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in handles:
                handles[n] = h
                names.append(n)
    fig.legend([handles[n] for n in names], names, loc="outside right center", frameon=False, title=title,
               alignment="left")


def _refuse_pooling(runs, group_by, figures, pool):
    """A line that would average runs differing in an argument other than the seeds: the error message (None:
    none, or --pool asked for it). Returns (message, {figure: pooled arguments})."""
    pooled = {f: pooled_arguments(runs, group_by, axis="lr" if f == "score_vs_lr" else None) for f in figures}
    mixed = {k: v for p in pooled.values() for k, v in p.items()}
    if mixed and not pool:
        what = " and ".join(f"{k} ({', '.join(map(str, v))})" for k, v in mixed.items())
        return (f"a line would average runs that differ in {what}: pass --group_by {','.join(mixed)}, or --pool to "
                f"average across {'it' if len(mixed) == 1 else 'them'}"), pooled
    return None, pooled


def main(argv=None):
    args = build_parser().parse_args(argv)
    figures = [f for f in args.figures.split(",") if f]
    unknown = [f for f in figures if f not in FIGURES]
    try:
        if unknown or not figures:
            raise ValueError(f"--figures {args.figures}: name {' or '.join(FIGURES)} (comma-separated)")
        runs, group_by = run_files.load_runs(args.runs_dirs, args.group_by, "plot_curves.py")
        problem, pooled = _refuse_pooling(runs, group_by, figures, args.pool)
        if problem:
            raise ValueError(problem)
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_curves.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if any(pooled.values()):
        print("plot_curves.py: warning: --pool: lines average runs that differ in "
              + ", ".join(sorted({k for p in pooled.values() for k in p})), file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    tasks = sorted({r.task for r in runs}, key=run_files.task_rank)
    written = []
    if "val_curves" in figures:
        written.append(os.path.join(args.out, f"val_curves.{args.format}"))
        plot_curves(curves_frame(runs, group_by), tasks, written[-1], band=args.band, pooled=pooled["val_curves"])
    if "score_vs_lr" in figures:
        df, skipped = lr_frame(runs, args.metric, group_by)  # score against lr, where a series has several
        if not df.empty and (df.groupby(["label", "task"])["lr"].nunique() > 1).any():
            if skipped:
                print(f"plot_curves.py: warning: score_vs_lr leaves out {len(skipped)} run(s) without a "
                      f"{args.metric} score: {', '.join(skipped)}", file=sys.stderr)
            written.append(os.path.join(args.out, f"score_vs_lr.{args.format}"))
            plot_lr(df, tasks, args.metric, written[-1], band=args.band, pooled=pooled["score_vs_lr"])
        else:
            print(f"plot_curves.py: note: no method was run with more than one --lr on a task; no "
                  f"score_vs_lr.{args.format}", file=sys.stderr)
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
