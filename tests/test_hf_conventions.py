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
    assert os.listdir(tmp_path) == []  # nothing written, no runs/ left behind


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
