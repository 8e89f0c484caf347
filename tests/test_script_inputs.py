"""Every script under scripts/ that reads user files distrusts them: a malformed input of each kind (JSON of the
wrong type or shape, YAML values of the wrong type, a pickled, torn or non-finite checkpoint, a torn run list, a
symbolic link or FIFO where a file is expected) gives exit 2 and an error line, no traceback, and nothing of the
user's changed. Tables never show a number they cannot vouch for. The run folder's own files: --overwrite removes
every output of the replaced run, metrics.jsonl is repaired before appending, the lock and the logs are plain files.
"""
from __future__ import annotations

import importlib.util
import json
import os
import threading
from argparse import Namespace

import numpy as np
import pytest

from conftest import ROOT, run_py

ENV = {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ARGS = {"task": "cb", "model_name": "t5-small", "prefix_len": 10, "seq_len": 64, "batch_size": 4, "num_epochs": 2,
        "prefix_MLP": "MLP1", "residual": 1, "freeze_weights": 1, "lr": 0.3, "seed": 1, "save_dir": "runs"}


def fake_run(root, name, args=None, results=None):
    """A finished run's args.json and results.json, as train.py writes them (edited by ``args`` / ``results``)."""
    d = root / name
    d.mkdir(parents=True)
    a = {**ARGS, **(args or {})}
    r = results if isinstance(results, str) else json.dumps({
        "task": "cb", "complete": True, "args": {k: v for k, v in ARGS.items() if k != "save_dir"},
        "validation": [{"epoch": 0, "score": 0.5, "loss": 1.0}], "best_epoch": 0, "best_val_score": 0.5,
        "test": {"score": 0.6}, "norms": {"projected": 2.0, "embedding": 1.0, "phi": 1.0, "prompt": 1.0},
        **(results or {})})
    (d / "args.json").write_text(json.dumps(a))
    (d / "results.json").write_text(r)
    return d


# run records that cannot be vouched for: (args.json edits, results.json edits or text)
UNVOUCHED = {
    "nan_score": (None, {"best_val_score": float("nan"), "test": {"score": float("nan")}}),
    "inf_score": (None, {"best_val_score": float("inf"), "test": {"score": float("-inf")}}),
    "string_score": (None, {"best_val_score": "0.9", "test": {"score": "0.9"}}),
    "other_args": (None, {"args": {**{k: v for k, v in ARGS.items() if k != "save_dir"}, "prefix_MLP": "None"}}),
    "args_type": ({"prefix_len": "10"}, None),
    "task_type": ({"task": ["cb"]}, {"task": None}),
    "validation_shape": (None, {"validation": {"epoch": 0}}),
    "validation_entry": (None, {"validation": [{"epoch": 0, "score": float("nan"), "loss": 1.0}]}),
    "validation_keys": (None, {"validation": [{"epoch": "0"}]}),
    "test_shape": (None, {"test": [0.6]}),
    "norms_shape": (None, {"norms": [1, 2]}),
    "results_list": (None, "[1, 2]"),
    "results_torn": (None, '{"task": "cb", "complete": tr'),
}


@pytest.mark.parametrize("script", ["make_table", "plot_curves"])
@pytest.mark.parametrize("kind", list(UNVOUCHED))
def test_tables_and_plots_refuse_records_they_cannot_vouch_for(tmp_path, capsys, script, kind):
    """One good run, one bad: the bad one is named on stderr and counts nowhere (n = 1); alone: exit 2."""
    args, results = UNVOUCHED[kind]
    module = load_script(script)
    fake_run(tmp_path / "runs", "good")
    fake_run(tmp_path / "runs", "bad", args, results)
    argv = [str(tmp_path / "runs")] + (["--metric", "best_val"] if script == "make_table" else
                                       ["--out", str(tmp_path / "plot.png")])
    assert module.main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(tmp_path / "runs" / "bad") in err
    if script == "make_table":
        assert module.main(argv + ["--out", str(tmp_path / "t")]) == 0
        capsys.readouterr()
        cells = (tmp_path / "t.csv").read_text()
        assert ",1," in cells and "nan" not in cells.split("\n")[1].lower().split(",")[4:6]
    os.rename(tmp_path / "runs" / "good", tmp_path / "good")  # the bad run alone: nothing to show
    assert module.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"{script}.py: error:")


def test_overwrite_removes_every_output_of_the_replaced_run(tmp_path):
    import run_folder as rf

    d = tmp_path / "run"
    (d / "tensorboard").mkdir(parents=True)
    (d / "adapter").mkdir()
    (d / "model").mkdir()
    outputs = ["results.json", "checkpoint.pt", "prompt.npy", "score_dict.npy", "train_state.pt", "metrics.jsonl",
               "all_results.json", "predictions_val.jsonl", "predictions_test.jsonl", "predictions_train.jsonl"]
    for name in outputs + ["args.json", "notes.txt"]:
        (d / name).write_text("old")
    assert set(rf.run_outputs(d)) == set(outputs) | {"tensorboard", "adapter", "model"}
    assert rf.run_outputs(d)[0] == "results.json"
    rf.RunFolder(str(d)).start({"lr": 0.1})
    assert sorted(os.listdir(d)) == ["args.json", "notes.txt"]  # not a run's file: the user's, kept
    assert json.loads((d / "args.json").read_text()) == {"lr": 0.1}


@pytest.mark.parametrize("torn", ['{"epoch": 0, "lo', '{"epoch": 0}{"epo', "x" * 70000])
def test_metrics_log_drops_a_torn_last_line_before_appending(tmp_path, torn):
    import run_folder as rf

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": -1}\n' + torn)
    folder = rf.RunFolder(str(tmp_path))
    folder.log_metrics({"epoch": 1})
    folder.log_metrics({"epoch": 2})
    assert [json.loads(line) for line in log.read_text().splitlines()] == [{"epoch": -1}, {"epoch": 1}, {"epoch": 2}]


def _claim_args():
    return Namespace(overwrite=0, resume="auto")


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl"])
@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_lock_and_log_are_plain_files_never_followed(tmp_path, name, kind):
    """A symbolic link, FIFO or folder where the lock or metrics.jsonl goes: refused in one line, at once (a FIFO
    used to block forever while holding the lock), and the link's target untouched."""
    import run_folder as rf
    from residual_prompts.errors import ConfigError

    d = tmp_path / "run"
    d.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("mine")
    {"symlink": lambda p: os.symlink(target, p), "fifo": os.mkfifo, "folder": os.mkdir}[kind](d / name)
    result = {}

    def claim():
        try:
            rf.RunFolder(str(d)).claim(_claim_args())
        except ConfigError as e:
            result["error"] = str(e)

    t = threading.Thread(target=claim, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "claiming the folder blocked"
    assert name in result["error"] and "\n" not in result["error"]
    assert target.read_text() == "mine" and os.path.lexists(d / name)
