"""scripts/make_table.py and scripts/plot_curves.py on synthetic run folders with known numbers."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from run_folder import method_label

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_table = load_script("make_table")
plot_curves = load_script("plot_curves")

ARGS = {"task": "cb", "prefix_len": 10, "prefix_MLP": "None", "residual": 1, "freeze_weights": 1,
        "freeze_except": "xxxxxxx", "lr": 0.3, "seed": 0, "data_seed": 0, "select_k_per_class": -1,
        "model_name": "t5-base", "num_epochs": 2, "save_dir": "runs", "device": "auto"}
PT = {}
RES = {"prefix_MLP": "MLP1"}
FT = {"prefix_len": 0, "freeze_weights": 0, "lr": 3e-4}


def write_run(root, name, curve, test=None, complete=True, **args):
    """A run folder as train.py leaves it: validation score per epoch ``curve`` (loss = 1 - score), the best
    epoch's score as best_val_score, and ``test`` as the test subset's score (None: no test subset)."""
    run = Path(root) / name
    run.mkdir(parents=True)
    args = {**ARGS, "save_name": name, **args}
    validation = [{"epoch": i, "score": s, "metric": [s, s], "official": {"acc": s}, "loss": 1.0 - s}
                  for i, s in enumerate(curve)]
    best = int(np.argmax(curve))
    results = {"task": args["task"], "complete": complete, "validation": validation, "best_epoch": best,
               "best_val_score": curve[best], "train": {"loss": [1.0] * len(curve), "acc": [None] * len(curve),
                                                        "step_losses": [[1.0]] * len(curve)}, "wall_time_s": 1.0}
    if test is not None:
        results["test"] = {"score": test, "metric": [test, test], "official": {"acc": test}, "loss": 1.0 - test}
    (run / "args.json").write_text(json.dumps(args))
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture
def sweep(tmp_path):
    """cb and rte_superglue; PT x 3 seeds, Residual PT x 2 seeds (+1 unfinished), fine-tuning x 1 seed on cb."""
    root = tmp_path / "runs"
    for seed, curve, test in ((0, [0.50, 0.70], 0.60), (1, [0.60, 0.75], 0.65), (2, [0.55, 0.80], 0.70)):
        write_run(root / "pt", f"cb_s{seed}", curve, test, seed=seed, **PT)
    for seed, curve, test in ((0, [0.70, 0.80], 0.78), (1, [0.84, 0.80], 0.80)):
        write_run(root / "res", f"cb_s{seed}", curve, test, seed=seed, **RES)
    write_run(root / "res", "cb_s2", [0.0], None, complete=False, seed=2, **RES)  # unfinished: must not count
    for seed, best, test in ((0, 0.60, 0.5), (1, 0.62, 0.5), (2, 0.64, 0.5)):
        write_run(root / "pt", f"rte_s{seed}", [0.1, best], test, seed=seed, task="rte_superglue", **PT)
    for seed, best, test in ((0, 0.70, 0.66), (1, 0.70, 0.70)):
        write_run(root / "res", f"rte_s{seed}", [best, 0.2], test, seed=seed, task="rte_superglue", **RES)
    write_run(root / "ft", "cb_s0", [0.90, 0.85], 0.85, **FT)
    return root


def table_lines(out):
    return [line for line in out.splitlines() if line.startswith("|")]


def test_method_labels():
    assert method_label({**ARGS, **FT}) == "Fine-tuning"
    assert method_label({**ARGS, **PT}) == "PT"
    assert method_label({**ARGS, **RES}) == "Residual PT (MLP1)"
    assert method_label({**ARGS, "prefix_MLP": "MLP2", "residual": 0}) == "PT + MLP2 (no residual)"
    assert method_label({**ARGS, "prefix_MLP": "LSTM1", "residual": 0}) == "PT + LSTM1 (no residual)"
    assert method_label({**ARGS, "prefix_MLP": "LSTM1"}) == "Residual PT (LSTM1)"
    assert method_label({**ARGS, **RES, "freeze_weights": 0}) == "Residual PT (MLP1) + fine-tuning"
    assert method_label({**ARGS, "freeze_except": "shared"}) == "PT + 'shared' trained"


def test_table_of_best_validation_scores(sweep, tmp_path, capsys):
    out = tmp_path / "tables" / "t"
    assert make_table.main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    # cells differ in their number of seeds (3, 2, 1): each shows its n; std is the sample std (ddof=1)
    assert table_lines(printed.out) == [
        "| Method | cb | rte_superglue | Avg |",
        "|---|---|---|---|",
        "| Fine-tuning | 90.0 (n=1) | – | – |",
        "| PT | 75.0 ± 5.0 (n=3) | 62.0 ± 2.0 (n=3) | 68.5 |",
        "| Residual PT (MLP1) | 82.0 ± 2.8 (n=2) | 70.0 ± 0.0 (n=2) | 76.0 |"]
    assert "skipped 1 incomplete run(s)" in printed.err and str(sweep / "res" / "cb_s2") in printed.err
    assert "averages runs that differ" not in printed.err

    csv = pd.read_csv(f"{out}.csv").set_index(["method", "task"])
    assert list(csv.columns) == ["n", "mean_x100", "std_x100", "seeds"]
    pt_cb = csv.loc[("PT", "cb")]
    assert pt_cb["n"] == 3 and pt_cb["seeds"] == "0;1;2"
    assert pt_cb["mean_x100"] == pytest.approx(75.0) and pt_cb["std_x100"] == pytest.approx(5.0)
    res_cb = csv.loc[("Residual PT (MLP1)", "cb")]
    assert res_cb["n"] == 2 and res_cb["mean_x100"] == pytest.approx(82.0)
    assert res_cb["std_x100"] == pytest.approx(np.std([80.0, 84.0], ddof=1)) == pytest.approx(2 * math.sqrt(2))
    assert csv.loc[("PT", "Avg"), "mean_x100"] == pytest.approx(68.5)
    assert csv.loc[("Residual PT (MLP1)", "Avg"), "mean_x100"] == pytest.approx(76.0)
    assert math.isnan(csv.loc[("Fine-tuning", "Avg"), "mean_x100"])  # no rte_superglue run
    assert math.isnan(csv.loc[("Fine-tuning", "cb"), "std_x100"])  # one seed: no std
    assert len(csv) == 8  # one line per cell that has runs, plus Avg: PT and Residual PT 3 each, fine-tuning 2
    tex = Path(f"{out}.tex").read_text()
    assert r"\begin{tabular}" in tex and r"75.0 $\pm$ 5.0 (n=3)" in tex and r"rte\_superglue" in tex


def test_table_of_test_scores_skips_runs_without_one(sweep, tmp_path, capsys):
    write_run(sweep / "pt", "cb_s3_no_test", [0.1, 0.1], None, seed=3, **PT)  # trained without a test subset
    assert make_table.main([str(sweep / "pt"), str(sweep / "res"), "--metric", "test", "--out",
                            str(tmp_path / "t")]) == 0
    printed = capsys.readouterr()
    assert table_lines(printed.out)[2:] == ["| PT | 65.0 ± 5.0 (n=3) | 50.0 ± 0.0 (n=3) | 57.5 |",
                                            "| Residual PT (MLP1) | 79.0 ± 1.4 (n=2) | 68.0 ± 2.8 (n=2) | 73.5 |"]
    assert "skipped 1 run(s) with no test score" in printed.err and "cb_s3_no_test" in printed.err


def test_same_seed_count_is_said_once(sweep, tmp_path, capsys):
    assert make_table.main([str(sweep / "res"), "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert table_lines(out)[2:] == ["| Residual PT (MLP1) | 82.0 ± 2.8 | 70.0 ± 0.0 | 76.0 |"]
    assert "n=2 per cell" in out and "ddof=1" in out


def test_group_by_splits_rows_and_mixed_cells_are_refused_unless_pooled(sweep, tmp_path, capsys):
    for seed, best in ((0, 0.60), (1, 0.70)):
        write_run(sweep / "res_lr", f"cb_s{seed}", [best], None, seed=seed, lr=0.03, **RES)
    # without --group_by the four cb runs would be one cell across two lrs: refused, one line naming the axis
    assert make_table.main([str(sweep / "res"), str(sweep / "res_lr"), "--out", str(tmp_path / "t")]) == 2
    printed = capsys.readouterr()
    errors = [ln for ln in printed.err.splitlines() if "error" in ln]  # (beside the unfinished run's warning)
    assert printed.out == "" and errors == [
        "make_table.py: error: runs of cell Residual PT (MLP1) / cb differ in lr (0.03, 0.3): pass --group_by lr, "
        "or --pool to average across it"]
    assert not (tmp_path / "t.csv").exists()
    for extra in (["--paired", "Residual PT (MLP1)", "PT"], ["--metric", "wall_time_s"]):  # every mode refuses
        assert make_table.main([str(sweep), str(sweep / "res_lr"), *extra]) == 2
        assert "differ in lr (0.03, 0.3): pass --group_by lr" in capsys.readouterr().err

    # --pool asks for the average across lr (mean of 80, 84, 60, 70), and the warning says what was pooled
    assert make_table.main([str(sweep / "res"), str(sweep / "res_lr"), "--pool", "--out", str(tmp_path / "t")]) == 0
    printed = capsys.readouterr()
    assert table_lines(printed.out)[2].startswith(
        f"| Residual PT (MLP1) | 73.5 ± {np.std([80, 84, 60, 70], ddof=1):.1f} (n=4) |")
    assert "make_table.py: warning: --pool: cells average runs that differ in lr (1 cell)\n" in printed.err

    assert make_table.main([str(sweep / "res"), str(sweep / "res_lr"), "--group_by", "lr", "--out",
                            str(tmp_path / "g")]) == 0
    printed = capsys.readouterr()
    assert table_lines(printed.out) == [
        "| Method | lr | cb | rte_superglue | Avg |",
        "|---|---|---|---|---|",
        f"| Residual PT (MLP1) | 0.03 | 65.0 ± {np.std([60, 70], ddof=1):.1f} | – | – |",
        "| Residual PT (MLP1) | 0.3 | 82.0 ± 2.8 | 70.0 ± 0.0 | 76.0 |"]
    assert "n=2 per cell" in printed.out  # every cell has 2 seeds: said once
    assert "differ in" not in printed.err
    csv = pd.read_csv(tmp_path / "g.csv")
    row = csv[(csv["lr"] == 0.03) & (csv["task"] == "cb")].iloc[0]
    assert row["mean_x100"] == pytest.approx(65.0) and row["n"] == 2


def test_bad_input_is_refused(sweep, tmp_path, capsys):
    assert make_table.main([str(sweep), "--group_by", "learning_rate", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--group_by learning_rate: not an argument" in err and "lr" in err
    assert make_table.main([str(tmp_path / "missing"), "--out", str(tmp_path / "t")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert make_table.main([str(tmp_path / "empty"), "--out", str(tmp_path / "t")]) == 2
    assert "no complete run" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def assert_png(path):
    import matplotlib.image

    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    pixels = matplotlib.image.imread(path)  # [height, width, RGBA]
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels.std() > 0.01


def test_curves_are_means_and_stds_over_seeds(sweep, tmp_path, capsys):
    runs, _ = plot_curves.run_folder.find_runs([sweep])
    stats = plot_curves.plot_curves(plot_curves.curves_frame(runs, []), ["cb", "rte_superglue"], tmp_path / "c.png")
    pt_cb = stats[(stats["label"] == "PT") & (stats["task"] == "cb")].set_index("epoch")
    assert pt_cb.index.tolist() == [1, 2]  # 1-based epochs, as the convergence table counts them
    assert pt_cb["score_mean"].tolist() == pytest.approx([55.0, 75.0])  # (50, 60, 55) and (70, 75, 80)
    assert pt_cb["score_std"].tolist() == pytest.approx([5.0, 5.0])
    assert pt_cb["loss_mean"].tolist() == pytest.approx([0.45, 0.25]) and pt_cb["n"].tolist() == [3, 3]
    res_cb = stats[(stats["label"] == "Residual PT (MLP1)") & (stats["task"] == "cb")].set_index("epoch")
    assert res_cb["score_mean"].tolist() == pytest.approx([77.0, 80.0])  # the unfinished run is not in it
    assert res_cb["score_std"].tolist() == pytest.approx([np.std([70, 84], ddof=1), 0.0])
    ft = stats[stats["label"] == "Fine-tuning"]
    assert ft["n"].tolist() == [1, 1] and ft["score_std"].isna().all()  # one seed: a line without a band
    assert_png(tmp_path / "c.png")


def test_plot_script_writes_curves_and_lr_plot(sweep, tmp_path, capsys):
    for seed, best in ((0, 0.60), (1, 0.70)):
        write_run(sweep / "res_lr", f"cb_s{seed}", [best], None, seed=seed, lr=0.03, **RES)
    out = tmp_path / "plots"
    assert plot_curves.main([str(sweep), "--out", str(out), "--group_by", "lr"]) == 0
    printed = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["score_vs_lr.png", "val_curves.png"]
    for png in out.iterdir():
        assert_png(png)
    assert "skipped 1 incomplete run(s)" in printed.err and "averages runs that differ" not in printed.err

    runs, _ = plot_curves.run_folder.find_runs([sweep])
    df, skipped = plot_curves.lr_frame(runs, "best_val", ["lr"])
    assert skipped == []
    stats = plot_curves.plot_lr(df, ["cb", "rte_superglue"], "best_val", tmp_path / "lr.png")
    res_cb = stats[(stats["label"] == "Residual PT (MLP1)") & (stats["task"] == "cb")].set_index("lr")
    assert res_cb["score_mean"].tolist() == pytest.approx([65.0, 82.0]) and res_cb.index.tolist() == [0.03, 0.3]
    assert res_cb.loc[0.03, "score_std"] == pytest.approx(np.std([60, 70], ddof=1))
    ft = stats[stats["label"] == "Fine-tuning"]
    assert ft["lr"].tolist() == [3e-4] and ft["score_mean"].tolist() == pytest.approx([90.0])


def test_no_lr_plot_without_an_lr_sweep(sweep, tmp_path, capsys):
    out = tmp_path / "plots"
    assert plot_curves.main([str(sweep / "pt"), "--out", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["val_curves.png"]
    assert "no score_vs_lr.png" in capsys.readouterr().err
    assert_png(out / "val_curves.png")


convergence = load_script("convergence")


def test_convergence_means_over_seeds_then_tasks(sweep, tmp_path, capsys):
    """Score after each epoch per method; tasks that not every row has (rte: no fine-tuning run) are left out."""
    assert convergence.main([str(sweep), "--epochs", "1,2", "--out", str(tmp_path / "conv")]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table_lines(capsys.readouterr().out)[2:]}
    assert rows["PT"] == ["55.0", "75.0", "2.0"]                  # cb only: seeds (50, 60, 55) and (70, 75, 80)
    assert rows["Residual PT (MLP1)"] == ["77.0", "80.0", "1.5"]  # the unfinished third seed does not count
    assert rows["Fine-tuning"] == ["90.0", "85.0", "1.0"]
    csv = pd.read_csv(tmp_path / "conv.csv")
    assert set(csv["tasks"]) == {1}


def test_convergence_averages_tasks_every_method_has(sweep, capsys):
    assert convergence.main([str(sweep / "pt"), str(sweep / "res"), "--epochs", "1,2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table_lines(out)[2:]}
    assert rows["PT"] == ["32.5", "68.5", "2.0"]                  # (55 + 10) / 2, (75 + 62) / 2
    assert rows["Residual PT (MLP1)"] == ["73.5", "50.0", "1.2"]  # best epochs cb 1.5, rte 1.0 -> 1.25
    assert "the 2 task(s)" in out


def test_convergence_refuses_epochs_no_run_reached(sweep, capsys):
    assert convergence.main([str(sweep), "--epochs", "3"]) == 2
    assert "no run reached epoch 3" in capsys.readouterr().err
    assert convergence.main([str(sweep), "--epochs", "0,x"]) == 2
    assert "--epochs" in capsys.readouterr().err


def png_size(path):
    head = Path(path).read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_many_tasks_wrap_onto_more_rows(tmp_path, capsys):
    """Seven tasks: five panels per row, then a second pair of rows (not one 7-panel-wide strip)."""
    tasks = ["cb", "copa", "wic", "boolq", "rte_superglue", "wsc_bool", "multirc"]
    for task in tasks:
        write_run(tmp_path / "seven", task, [0.5, 0.6], task=task, **PT)
    for task in tasks[:5]:
        write_run(tmp_path / "five", task, [0.5, 0.6], task=task, **PT)
    assert plot_curves.main([str(tmp_path / "seven"), "--out", str(tmp_path / "p7")]) == 0
    assert plot_curves.main([str(tmp_path / "five"), "--out", str(tmp_path / "p5")]) == 0
    (w7, h7), (w5, h5) = png_size(tmp_path / "p7/val_curves.png"), png_size(tmp_path / "p5/val_curves.png")
    assert abs(w7 - w5) < 0.1 * w5 and h7 > 1.8 * h5
