"""Hugging Face users' habits (issue 26): train.py's --help in sections with every default, on/off flags and choices
as they are usually written, transformers' flag spellings, a "did you mean" for typos, a mistyped local model
folder refused at once, and the metric-name table."""
import os
import re
import time

import pytest

import arguments
import train
from residual_prompts import metrics
from run_files import NOT_DEFINING

BASE = ["--save_name", "x", "--task", "cb"]


def parse(*flags):
    return arguments.build_parser().parse_args(BASE + list(flags))


def refusal(capsys, *flags):
    with pytest.raises(SystemExit) as e:
        parse(*flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_help_has_every_section_and_every_default(capsys):
    with pytest.raises(SystemExit):
        arguments.build_parser().parse_args(["--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    positions = [text.index(f"{title}:") for title in arguments.GROUPS]
    assert positions == sorted(positions)  # the sections, in order
    parser = arguments.build_parser()
    for name, action in parser.flags.items():
        assert sum(name in flags for flags in arguments.GROUPS.values()) == 1, name
        if not action.required:
            help_text = re.sub(r"\s+", " ", action.help % {"default": action.default})
            assert help_text in text and (f"{help_text} (default: " in text or "default" in action.help), name
    assert "training epochs (paper: 20 for prompt tuning, 50 for fine-tuning) (default: 5)" in text
    # what changes the numbers is marked; what does not define a run is not
    assert "[*] learning rate of prompt and model" in text
    assert "[*] evaluation batch size" not in text and "evaluation batch size" in text
    assert all(f"[*] {parser.flags[n].help}" not in text for n in NOT_DEFINING if n in parser.flags)


@pytest.mark.parametrize("word, value", [("true", 1), ("True", 1), ("yes", 1), ("on", 1), ("1", 1),
                                         ("false", 0), ("NO", 0), ("off", 0), ("0", 0)])
def test_on_off_flags_take_the_usual_words_and_store_0_or_1(word, value):
    args = parse("--freeze_weights", word, f"--early_stopping={word}")
    assert args.freeze_weights == value and args.early_stopping == value and type(args.freeze_weights) is int


def test_choices_and_flag_names_are_case_insensitive_and_stored_as_defined():
    args = parse("--prefix_mlp", "mlp1", "--NONLINEARITY", "TANH", "--report_to", "TensorBoard")
    assert (args.prefix_MLP, args.nonlinearity, args.report_to) == ("MLP1", "tanh", "tensorboard")
    assert parse("--prefix_MLP", "none").prefix_MLP == "None"
    assert arguments.build_parser().parse_args(["--save_name", "x", "--task", "CB"]).task == "cb"
    assert parse("--save_adapter", "yes").save_adapter == "1"  # a choice of strings "auto", "0", "1"


def test_transformers_spellings_are_aliases_of_the_same_flag():
    args = parse("--learning_rate", "0.03", "--num_train_epochs", "7", "--model_name_or_path", "t5-small",
                 "--max_seq_length", "128", "--logging_steps", "5", "--save_steps", "9")
    assert (args.lr, args.num_epochs, args.model_name, args.seq_len, args.log_every_steps, args.save_every_steps) \
        == (0.03, 7, "t5-small", 128, 5, 9)
    assert set(arguments.build_parser().flags) >= {"lr", "num_epochs"}  # flags keep their own names
    assert "learning_rate" not in arguments.build_parser().flags


@pytest.mark.parametrize("flags, says", [
    (["--output_dir", "out"], "--output_dir: train.py's equivalent is --save_dir DIR --save_name NAME"),
    (["--per_device_train_batch_size", "8"], "equivalent is --batch_size"),
    (["--fp16"], "equivalent is --precision fp16"),
    (["--lerning_rate", "0.3"], "unrecognized argument --lerning_rate: did you mean --learning_rate?"),
    (["--prefix_MLP", "MPL1"], "did you mean MLP1?"),
    (["--task", "cbb"], "unknown task 'cbb'; did you mean cb?"),
    (["--freeze_weights", "maybe"], "--freeze_weights: 'maybe' is not on/off: use 1 or 0"),
])
def test_unknown_flags_and_choices_get_a_suggestion(capsys, flags, says):
    err = refusal(capsys, *flags)
    assert says in err, err


def test_a_path_like_model_name_that_does_not_exist_is_refused_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--task", "cb", "--save_dir", "runs", "--save_name", "x", "--model_name", "./nope"]
    start = time.perf_counter()
    code = train.main(argv)
    seconds = time.perf_counter() - start  # the refusal alone: the libraries were imported with train
    err = capsys.readouterr().err
    assert code == 2 and seconds < 3, seconds
    assert len(err.strip().splitlines()) == 1 and "--model_name ./nope: no such folder" in err
    assert os.listdir(tmp_path) == []  # a failed first run leaves nothing: not even the runs/ it made (exit 2)


@pytest.mark.parametrize("name, path", [("./nope", True), ("/abs/model", True), ("a/b/c", True),
                                        ("t5-base", False), ("google/flan-t5-base", False)])
def test_what_looks_like_a_path(name, path):
    from residual_prompts.models import looks_like_path
    assert looks_like_path(name) is path


def test_metric_names_are_evaluates_names():
    assert metrics.hf_metrics({"acc": 0.5, "f1_macro": 0.25}) == {"eval_accuracy": 0.5, "eval_f1": 0.25}
    assert metrics.hf_metrics({"mcc": 0.1}, "test") == {"test_matthews_correlation": 0.1}
    assert metrics.hf_metrics({"pearson": 0.9, "spearman": 0.8}) == {"eval_pearson": 0.9, "eval_spearmanr": 0.8}
    assert metrics.hf_metrics({"em": 0.3, "f1a": 0.6}) == {"eval_exact_match": 0.3, "eval_f1_a": 0.6}
    from residual_prompts.tasks import TASKS
    assert metrics.score_name(TASKS["cola"]) == "Matthews correlation"
    assert {metrics.score_name(t) for t in TASKS.values()} <= set(metrics.SCORE_NAMES.values())


# ---- plot_curves.py: formats, axes, epochs, pooling ----------------------------------------------------------
from test_workflow_tables import PT, RES, plot_curves, table_runs, write_run  # noqa: E402,F401


def with_lr_sweep(root):
    """table_runs plus Residual PT on cb at a second lr (0.03; the others ran at 0.3)."""
    for seed, best in ((0, 0.60), (1, 0.70)):
        write_run(root / "res_lr", f"cb_s{seed}", [best, best], None, seed=seed, lr=0.03, **RES)
    return root


def test_figures_in_png_at_300_dpi_pdf_and_svg(table_runs, tmp_path):
    from PIL import Image

    with_lr_sweep(table_runs)
    for fmt, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")):
        out = tmp_path / fmt
        assert plot_curves.main([str(table_runs), "--out", str(out), "--group_by", "lr", "--format", fmt]) == 0
        assert sorted(p.name for p in out.iterdir()) == [f"score_vs_lr.{fmt}", f"val_curves.{fmt}"]
        assert all(p.read_bytes().startswith(magic) for p in out.iterdir())
    assert Image.open(tmp_path / "png" / "val_curves.png").info["dpi"] == pytest.approx((300, 300), abs=0.1)


def test_the_y_axis_names_each_tasks_metric_and_epochs_count_from_1(table_runs):
    runs, _ = plot_curves.run_files.find_runs([table_runs])
    df = plot_curves.curves_frame(runs, ["lr"])
    assert sorted(df["epoch"].unique()) == [1, 2]  # as metrics.jsonl and the log line count
    fig, _ = plot_curves.curves_figure(df, ["cb", "rte_superglue"])
    top = fig.axes[:2]  # the score panels of the first row
    assert [ax.get_title() for ax in top] == ["cb", "rte_superglue"]
    assert [ax.get_ylabel() for ax in top] == ["mean of accuracy and macro-F1 x 100", "accuracy x 100"]
    assert fig.axes[2].get_xlabel() == "epoch (1 = after the first)"


def test_a_line_across_a_swept_argument_is_refused_unless_grouped_or_pooled(table_runs, tmp_path, capsys):
    """Residual PT ran at two lrs on cb: its line would average them (as make_table.py, refused)."""
    with_lr_sweep(table_runs)
    assert plot_curves.main([str(table_runs), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 2 and "differ in lr (0.03, 0.3): pass --group_by lr, or --pool" in err
    assert not (tmp_path / "a").exists()
    # score_vs_lr alone: lr is its x axis, nothing is pooled
    assert plot_curves.main([str(table_runs), "--out", str(tmp_path / "b"), "--figures", "score_vs_lr"]) == 0
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["score_vs_lr.png"]
    assert plot_curves.main([str(table_runs), "--out", str(tmp_path / "c"), "--pool"]) == 0
    assert "--pool: lines average runs that differ in lr" in capsys.readouterr().err
    runs, _ = plot_curves.run_files.find_runs([table_runs])
    pooled = plot_curves.pooled_arguments(runs, [])
    assert pooled == {"lr": [0.03, 0.3]}
    fig, _ = plot_curves.curves_figure(plot_curves.curves_frame(runs, []), ["cb"], pooled=pooled)
    title = fig.legends[0].get_title().get_text()
    assert "line: mean over 1–4 runs (seeds and the pooled lr)" in title and "pooled across lr: 0.03, 0.3" in title
    fig, _ = plot_curves.curves_figure(plot_curves.curves_frame(runs, ["lr"]), ["cb"])
    assert fig.legends[0].get_title().get_text().startswith("line: mean over 1–3 seeds (seed, data_seed)")


def test_band_choices_change_the_band_only(table_runs):
    runs, _ = plot_curves.run_files.find_runs([table_runs])
    df = plot_curves.curves_frame(runs, ["lr"])
    widths = {}
    for band in ("std", "sem", "none"):
        fig, stats = plot_curves.curves_figure(df, ["cb"], band=band)
        ax = fig.axes[0]
        widths[band] = sum(len(c.get_paths()) for c in ax.collections)  # fill_between polygons
        assert band != "sem" or "standard error" in fig.legends[0].get_title().get_text()
    assert widths["none"] == 0 and widths["std"] == widths["sem"] > 0


# ---- relative paths: train.py and sweep.py both from the folder they run in ----------------------------------
def test_sweep_resolves_relative_paths_from_its_folder_as_train_py(sweep, tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(tmp_path)
    argv = ["--task", "cb", "--save_dir", "runs", "--save_name", "x"]
    assert sweep.run_dir(argv) == str(tmp_path / "runs" / "x")  # as train.py, run here, writes it
    spec = tmp_path / "s.json"
    spec.write_text('{"name": "s", "fixed": {"model_name": "t5-small", "save_dir": "runs"}, "grid": {"task": ["cb"]}}')
    assert sweep.main(["sbatch", str(spec), "-o", "job.sbatch"]) == 0
    text = (tmp_path / "job.sbatch").read_text()
    assert f"#SBATCH --chdir={tmp_path}" in text.splitlines()  # the job's runs start here too
    assert f"exec bash {ROOT}/scripts/requeue_on_signal.sh" in text and f"{ROOT}/scripts/sweep.py run" in text


def test_make_table_says_when_a_cell_pools_runs_of_the_same_seed(tmp_path, capsys):
    from test_workflow_tables import make_table

    for name in ("a", "b"):  # the same run twice, under two names
        write_run(tmp_path / "runs", f"cb_{name}", [0.5, 0.6], 0.55, seed=1, **PT)
    write_run(tmp_path / "runs", "cb_c", [0.5, 0.7], 0.6, seed=2, **PT)
    assert make_table.main([str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert "cell PT / cb pools 2 runs of the same seed 1, data_seed 0 (n counts each)" in err
    assert "cb_a" in err and "cb_b" in err and "cb_c" not in err
