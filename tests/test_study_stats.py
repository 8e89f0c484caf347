"""The statistics docs/RESULTS.md reports: paired differences (make_table.py --paired), the spread across a grid
axis (--spread), the head-only control's label, and the constant-prediction baseline of the test half."""
import json
import math

import pandas as pd
import pytest
from scipy import stats

import data_utils
from run_folder import method_label
from test_workflow_tables import ARGS, PT, RES, make_table, sweep, table_lines, write_run  # noqa: F401



def test_paired_differences_per_task_and_over_all_pairs(sweep, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "paired"
    rc = make_table.main([str(sweep), "--metric", "test", "--paired", "Residual PT (MLP1)", "PT", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    rows = pd.read_csv(f"{out}.csv").set_index("task")
    # cb: Residual 78, 80 vs PT 60, 65 (seeds 0, 1; PT's seed 2 has no partner): differences 18, 15
    half = stats.t.ppf(0.975, 1) * math.sqrt(4.5) / math.sqrt(2)
    assert rows.loc["cb", "n"] == 2 and rows.loc["cb", "mean"] == pytest.approx(16.5)
    assert rows.loc["cb", "lo"] == pytest.approx(16.5 - half) and rows.loc["cb", "hi"] == pytest.approx(16.5 + half)
    assert (rows.loc["cb", "wins"], rows.loc["cb", "ties"], rows.loc["cb", "losses"]) == (2, 0, 0)
    # rte: 66, 70 vs 50, 50 -> 16, 20; All pools the four pairs
    assert rows.loc["rte_superglue", "mean"] == pytest.approx(18.0)
    assert rows.loc["All", "n"] == 4 and rows.loc["All", "mean"] == pytest.approx(17.25)
    d = pd.Series([18.0, 15.0, 16.0, 20.0])
    assert rows.loc["All", "std"] == pytest.approx(d.std(ddof=1))
    lines = table_lines(printed)
    assert lines[0] == ("| task | pairs | Residual PT (MLP1) − PT | 95% CI | std | MDE (80%) "
                        "| wins / ties / losses | sign test p |")
    assert lines[2].startswith("| cb | 2 | +16.5 | [") and lines[-1].startswith("| All | 4 | +17.2")


def test_paired_needs_partners_and_one_run_per_key(sweep, capsys):  # noqa: F811
    assert make_table.main([str(sweep), "--paired", "Residual PT (MLP1)", "PT + MLP1 (no residual)"]) == 2
    assert "no run of method 'PT + MLP1 (no residual)'" in capsys.readouterr().err
    write_run(sweep / "pt", "cb_s0_lr1", [0.5, 0.6], 0.6, seed=0, lr=1.0, **PT)  # a second PT run for cb seed 0
    assert make_table.main([str(sweep), "--metric", "test", "--paired", "Residual PT (MLP1)", "PT"]) == 2
    assert "runs of cell PT / cb differ in lr (0.3, 1): pass --group_by lr" in capsys.readouterr().err
    assert make_table.main([str(sweep), "--metric", "test", "--paired", "Residual PT (MLP1)", "PT", "--pool"]) == 2
    err = capsys.readouterr().err
    assert "'PT' has several runs" in err and "--group_by" in err
    # grouped by lr, the pairs need the same lr: none of Residual PT's (0.3) meets PT's 1.0 run, 0.3 ones pair
    assert make_table.main([str(sweep), "--metric", "test", "--group_by", "lr",
                            "--paired", "Residual PT (MLP1)", "PT"]) == 0
    out = capsys.readouterr().out
    assert "| All | 4 |" in out and "| cb, lr 0.3 | 2 | +16.5 |" in out  # one row per task and lr


def test_spread_across_learning_rates(tmp_path, capsys):
    root = tmp_path / "lr"
    for lr, scores in ((0.01, (0.60, 0.62)), (0.1, (0.70, 0.74)), (1.0, (0.50, 0.50))):
        for seed, s in enumerate(scores):
            write_run(root, f"pt_lr{lr}_s{seed}", [s], s, seed=seed, lr=lr, **PT)
    assert make_table.main([str(root), "--metric", "test", "--group_by", "lr", "--spread", "lr"]) == 0
    lines = table_lines(capsys.readouterr().out)
    spread = lines[lines.index("| Method | task | best lr | best | worst lr | worst | range | std across lr | values |"):]
    # means 61, 72, 50: best 0.1, worst 1.0, range 22, std of (61, 72, 50)
    assert spread[2] == f"| PT | cb | 0.1 | 72.0 | 1.0 | 50.0 | 22.0 | {pd.Series([61, 72, 50]).std():.1f} | 3 |"
    assert make_table.main([str(root), "--spread", "lr"]) == 2
    assert "--spread lr needs --group_by lr" in capsys.readouterr().err


def test_head_only_control_is_labelled_as_such():
    assert method_label({**ARGS, "prefix_len": 0, "freeze_weights": 1}) == "Head only"
    assert method_label({**ARGS, "prefix_len": 0, "freeze_weights": 0}) == "Fine-tuning"


@pytest.mark.parametrize("task, targets, expected", [
    ("sst2", ["positive"] * 6 + ["negative"] * 4, 0.6),  # the majority share
    ("cb", ["entailment"] * 10 + ["neutral"] * 5 + ["contradiction"] * 3, (10 / 18 + (2 * 10 / 28) / 3) / 2),
    ("cola", ["acceptable"] * 6 + ["not_acceptable"] * 4, 0.0),  # Matthews of a constant
    ("stsb", ["3.2", "1.0", "4.4"], 0.0),  # Pearson of a constant: no correlation
])
def test_constant_score_is_what_no_signal_scores(task, targets, expected):
    assert data_utils.constant_score(data_utils.TASKS[task], targets) == pytest.approx(expected)


def test_baseline_row_averages_each_test_half_once(tmp_path, capsys):
    root = tmp_path / "b"
    for method, extra in (("pt", PT), ("res", RES)):
        for seed, constant in ((1, 0.6), (2, 0.5)):
            run = write_run(root, f"{method}_s{seed}", [0.7], 0.7, seed=seed, data_seed=seed, **extra)
            results = json.loads((run / "results.json").read_text())
            results["test"]["constant_score"] = constant
            (run / "results.json").write_text(json.dumps(results))
    assert make_table.main([str(root), "--metric", "test", "--baseline"]) == 0
    lines = table_lines(capsys.readouterr().out)
    assert lines[2] == "| No signal (constant) | 55.0 ± 7.1 | 55.0 |"  # halves of data_seed 1 and 2, once each
    assert lines[3].startswith("| PT | 70.0")
    assert make_table.main([str(root), "--baseline"]) == 2  # best_val has no constant baseline


def test_norm_ratios_are_plain_ratios_not_scores(tmp_path, capsys):
    root = tmp_path / "n"
    for seed, (projected, phi) in enumerate(((19.5, 19.4), (20.5, 20.6))):
        run = write_run(root, f"res_s{seed}", [0.7], 0.7, seed=seed, **RES)
        results = json.loads((run / "results.json").read_text())
        results["norms"] = {"embedding": 1.0, "prompt": 2.0, "projected": projected, "phi": phi}
        (run / "results.json").write_text(json.dumps(results))
    write_run(root, "head", [0.7], 0.7, prefix_len=0)  # no prompt: no norms, skipped with a warning
    assert make_table.main([str(root), "--metric", "norm_ratio"]) == 0
    printed = capsys.readouterr()
    assert table_lines(printed.out)[2] == "| Residual PT (MLP1) | 20.00 ± 0.71 | 20.00 |"
    assert "skipped 1 run(s) with no prompt norms" in printed.err
    assert make_table.main([str(root), "--metric", "branch_ratio"]) == 0
    assert table_lines(capsys.readouterr().out)[2] == "| Residual PT (MLP1) | 10.00 ± 0.42 | 10.00 |"


def test_minimum_detectable_effect_of_a_paired_t_test():
    # at the MDE the two-sided paired t-test (alpha 0.05) has power 0.8: checked with the noncentral t directly
    for n, sd in ((5, 1.7), (15, 3.0), (3, 10.0)):
        d = make_table.mde(n, sd)
        crit, nc = stats.t.ppf(0.975, n - 1), d * math.sqrt(n) / sd
        assert stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) == pytest.approx(0.8, abs=1e-6)
    # large n: the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n)
    assert make_table.mde(2000, 1.0) == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(2000),
                                                       rel=2e-3)
    assert make_table.mde(5, 1.7) == pytest.approx(2.9, abs=0.05)  # what an independent review computed for sst2
    assert math.isnan(make_table.mde(1, 1.0)) and math.isnan(make_table.mde(4, 0.0))
    # more pairs, smaller MDE; it is not the CI half-width (which is smaller)
    assert make_table.mde(15, 2.0) < make_table.mde(5, 2.0)
    assert make_table.mde(5, 2.0) > stats.t.ppf(0.975, 4) * 2.0 / math.sqrt(5)


def test_paired_ties_within_a_tolerance_and_sign_test(tmp_path, capsys):
    for seed, (a, b) in enumerate(((0.700, 0.6994), (0.80, 0.70), (0.60, 0.70), (0.75, 0.70))):
        write_run(tmp_path / "runs", f"res{seed}", [a], a, seed=seed, **RES)
        write_run(tmp_path / "runs", f"pt{seed}", [b], b, seed=seed, **PT)
    out = tmp_path / "p"
    assert make_table.main([str(tmp_path / "runs"), "--metric", "test", "--paired", "Residual PT (MLP1)", "PT",
                            "--tie_tol", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = pd.read_csv(f"{out}.csv").set_index("task")
    # +0.06 is a tie within 0.5 points, not a win
    assert (rows.loc["cb", "wins"], rows.loc["cb", "ties"], rows.loc["cb", "losses"]) == (2, 1, 1)
    assert rows.loc["cb", "sign_p"] == pytest.approx(stats.binomtest(2, 3).pvalue)
    assert rows.loc["cb", "mde80"] == pytest.approx(make_table.mde(4, rows.loc["cb", "std"]))
    assert "a tie: |difference| <= 0.5" in printed and "| MDE (80%) |" in printed
    assert make_table.main([str(tmp_path / "runs"), "--metric", "test", "--paired", "Residual PT (MLP1)", "PT"]) == 0
    assert "| 3 / 0 / 1 |" in capsys.readouterr().out  # default: exact ties only (+0.06 is a win)
