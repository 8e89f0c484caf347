"""Plot finished runs: validation curves per method, and score against learning rate.

    python scripts/plot_curves.py runs/ --out plots/
    python scripts/plot_curves.py runs/ --out plots/ --group_by prefix_len --metric test

Writes into --out:
  val_curves.png   per task the validation score x 100 over the validation loss, against the epoch (1-based;
                   five tasks per row, then wrapping); per method a line for the mean over seeds and a band of ± the sample
                   std (ddof=1; no band for a single seed, and at an epoch that only some seeds reached, the mean of
                   those)
  score_vs_lr.png  only when runs of one method and task differ in --lr: the score (--metric: best_val or test)
                   x 100 against lr on a log axis whose ticks are the rates tried (labelled as written: 0.001,
                   0.3, 10), mean ± sample std over seeds, one panel per task
The legend's title says what line and band are: the mean and ± the sample std over N seeds (runs that differ only
in --seed/--data_seed), with N, or its range where curves have different numbers of seeds.
Runs are found and labelled as in scripts/make_table.py (incomplete runs are skipped with a warning; so are,
for score_vs_lr.png, runs without the chosen score). Exit codes: 0 done, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import run_folder  # noqa: E402

EXIT_BAD_INPUT = 2


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR", help="folders searched recursively for runs")
    p.add_argument("--out", required=True, help="output folder for the PNG files")
    p.add_argument("--metric", default="best_val", choices=run_folder.METRICS, help="the score of score_vs_lr.png")
    p.add_argument("--group_by", default="", help="comma-separated args.json keys that split methods (as make_table)")
    return p


def series_label(run, group_by):
    return run.method + "".join(f", {g}={run.args.get(g)}" for g in group_by)


def curves_frame(runs, group_by):
    """One row per (run, evaluation): label, task, epoch (1-based: 1 = after the first epoch, as convergence.py and
    the tables count; results.json counts from 0), score x 100, loss."""
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
    scored = [(r, run_folder.score(r, metric)) for r in runs]
    df = pd.DataFrame([{"label": series_label(r, group_by), "method": r.method, "task": r.task, "lr": r.args["lr"],
                        "score": 100.0 * s} for r, s in scored if s is not None])
    return df, [r.path for r, s in scored if s is None]


def mean_std(df, by, columns):
    """mean and sample std (ddof=1, NaN for one run) of ``columns`` per ``by``."""
    g = df.groupby(by, sort=True)
    out = g[columns].mean().add_suffix("_mean").join(g[columns].std(ddof=1).add_suffix("_std"))
    return out.join(g.size().rename("n")).reset_index()


def _labels_in_order(df):
    methods = dict(zip(df["label"], df["method"]))
    return sorted(methods, key=lambda lab: (run_folder.method_rank(methods[lab]), lab))


def _band(ax, x, mean, std, color, label, log=False):
    line, = ax.plot(x, mean, marker="o", ms=3, color=color, label=label)
    ax.fill_between(x, mean - std.fillna(0), mean + std.fillna(0), color=line.get_color(), alpha=0.2, lw=0)
    if log:
        ax.set_xscale("log")


def plot_curves(df, tasks, path, per_row=5):
    fig, stats = curves_figure(df, tasks, per_row)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return stats


def curves_figure(df, tasks, per_row=5):
    """(figure, stats) of val_curves.png: per task a score panel over a loss panel; more than ``per_row`` tasks
    wrap onto further pairs of rows."""
    labels = _labels_in_order(df)
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    stats = mean_std(df, ["label", "task", "epoch"], ["score", "loss"])
    ncol = min(per_row, len(tasks))
    bands = -(-len(tasks) // ncol)
    fig, axes = plt.subplots(2 * bands, ncol, figsize=(4.2 * ncol, 6.4 * bands), squeeze=False)
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
            _band(top, s["epoch"], s["score_mean"], s["score_std"], colors[lab], lab)
            _band(bottom, s["epoch"], s["loss_mean"], s["loss_std"], colors[lab], lab)
        top.set_title(task)
        bottom.set_xlabel("epoch (1 = after the first)")
        if j % ncol == 0:
            top.set_ylabel("validation score x 100")
            bottom.set_ylabel("validation loss")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(fig, axes, _band_title(stats["n"]))
    fig.tight_layout()
    return fig, stats


def plot_lr(df, tasks, metric, path):
    fig, stats = lr_figure(df, tasks, metric)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return stats


def lr_figure(df, tasks, metric):
    """(figure, stats) of score_vs_lr.png: per task a panel, x = lr on a log axis ticked at the rates tried."""
    labels = _labels_in_order(df)
    stats = mean_std(df, ["label", "task", "lr"], ["score"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for j, task in enumerate(tasks):
        ax = axes[0, j]
        for i, lab in enumerate(labels):
            s = stats[(stats["label"] == lab) & (stats["task"] == task)]
            if not s.empty:
                _band(ax, s["lr"], s["score_mean"], s["score_std"], f"C{i % 10}", lab, log=True)
        rates = sorted(stats.loc[stats["task"] == task, "lr"].unique())
        if rates:
            _rate_ticks(ax, rates)
        ax.set_title(task)
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(("best validation" if metric == "best_val" else "test") + " score x 100")
    _legend(fig, axes, _band_title(stats["n"]))
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


def _band_title(n):
    """What the line and the band of a plot are, with the number of seeds behind them."""
    n = n.dropna().astype(int)
    lo, hi = (int(n.min()), int(n.max())) if len(n) else (1, 1)
    if hi <= 1:
        return "one seed per line: no band"
    seeds = f"{hi} seeds" if lo == hi else f"{lo}–{hi} seeds"
    return f"line: mean over {seeds}\nband: ± sample std (ddof=1)" + ("\n(one seed: no band)" if lo == 1 else "")


def _legend(fig, axes, title=None):
    handles, names = {}, []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in handles:
                handles[n] = h
                names.append(n)
    fig.legend([handles[n] for n in names], names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title=title, alignment="left")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        runs, group_by = run_folder.load_runs(args.runs_dirs, args.group_by, "plot_curves.py")
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_curves.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    os.makedirs(args.out, exist_ok=True)
    tasks = sorted({r.task for r in runs}, key=run_folder.task_rank)
    series = {}
    for r in runs:
        series.setdefault((series_label(r, group_by), r.task), []).append(r)
    for (label, task), part in series.items():
        mixed = run_folder.mixed_arguments(part)
        if mixed:
            print(f"plot_curves.py: warning: curve {label} / {task} averages runs that differ in "
                  f"{'; '.join(f'{k} {v}' for k, v in mixed.items())}: add --group_by {','.join(mixed)}",
                  file=sys.stderr)
    written = [os.path.join(args.out, "val_curves.png")]
    plot_curves(curves_frame(runs, group_by), tasks, written[0])

    df, skipped = lr_frame(runs, args.metric, group_by)  # score against lr, where a series has several
    if not df.empty and (df.groupby(["label", "task"])["lr"].nunique() > 1).any():
        if skipped:
            print(f"plot_curves.py: warning: score_vs_lr.png leaves out {len(skipped)} run(s) without a "
                  f"{args.metric} score: {', '.join(skipped)}", file=sys.stderr)
        written.append(os.path.join(args.out, "score_vs_lr.png"))
        plot_lr(df, tasks, args.metric, written[1])
    else:
        print("plot_curves.py: note: no method was run with more than one --lr on a task; no score_vs_lr.png",
              file=sys.stderr)
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
