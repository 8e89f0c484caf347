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

import pytest

from conftest import ROOT

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


# ---- sweep.py: the sweep file, the run list, the generated script -------------------------------------------------
FIXED = "fixed: {task: cb, model_name: t5-small, num_epochs: 1}\n"
BAD_SWEEPS = {  # file name -> text; every one a bad input
    "grid_scalar.yaml": FIXED + "grid: {lr: 5}\n",
    "grid_key.yaml": FIXED + "grid: {5: [1]}\n",
    "fixed_list.yaml": "fixed: [1]\n",
    "fixed_value.yaml": "fixed: {task: cb, num_epochs: [1, 2]}\n",
    "fixed_type.yaml": "fixed: {task: cb, lr: abc}\n",
    "methods_value.yaml": FIXED + "methods: {a: 5}\n",
    "tie_scalar.yaml": FIXED + "tie: 3\n",
    "name_list.yaml": "name: [1]\n" + FIXED,
    "run_name_list.yaml": "run_name: [1]\n" + FIXED,
    "sbatch_list.yaml": FIXED + "sbatch: {time: [1]}\n",
    "sbatch_newline.yaml": FIXED + 'sbatch: {time: "1:00\\necho injected"}\n',
    "value_newline.yaml": 'fixed: {task: cb, model_name: t5-small, data_dir: "a\\nb"}\n',
    "top_list.json": "[1]",
    "torn.json": '{"fixed": {"task": "cb"',
    "binary.yaml": None,
    "torn.runs": "a\tpython train.py --lr '0.3\n",
    "foreign.runs": "a\tbash rm.sh\n",
}


@pytest.mark.parametrize("command", ["list", "sbatch"])
@pytest.mark.parametrize("name", list(BAD_SWEEPS))
def test_sweep_files_of_the_wrong_type_or_shape_are_one_line_errors(sweep, tmp_path, capsys, command, name):
    path = tmp_path / name
    text = BAD_SWEEPS[name]
    path.write_bytes(b"\xff\xfe\x00bad" if text is None else text.encode())
    if command == "sbatch" and name.endswith(".runs"):
        command = "status"
    argv = [command, str(path)] + (["-o", str(tmp_path / "out" / "job.sbatch")] if command == "sbatch" else [])
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sweep.py: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")  # nothing written


@pytest.mark.parametrize("name", ["s.yaml", "s.runs"])
def test_sweep_refuses_a_fifo_instead_of_blocking_on_it(sweep, tmp_path, capsys, name):
    os.mkfifo(tmp_path / name)
    assert sweep.main(["list", str(tmp_path / name)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_sbatch_values_are_quoted(sweep, tmp_path, capsys):
    path = tmp_path / "q.yaml"
    path.write_text(FIXED + 'sbatch: {time: "1:00; touch pwned", comment: "a b"}\n')
    assert sweep.main(["sbatch", str(path), "-o", str(tmp_path / "job.sbatch")]) == 0
    lines = (tmp_path / "job.sbatch").read_text().splitlines()
    assert "#SBATCH --time='1:00; touch pwned'" in lines and "#SBATCH --comment='a b'" in lines
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_a_locked_run_folder_is_running_not_failed(sweep, tmp_path):
    """After a kill -9 of sweep.py its children go on training: their folders are locked, and the rerun reports
    them as running (naming the holder), neither starting a second train.py into them nor calling them failed."""
    import fcntl

    import run_files

    folder = tmp_path / "runs" / "r0"
    folder.mkdir(parents=True)
    (folder / "args.json").write_text("{}")
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("pid 4242 on host node7\n")
        f.flush()
        assert run_files.run_status(str(folder)) == "running"
        assert run_files.lock_holder(str(folder)) == "pid 4242 on host node7"
        reason = sweep.skip_reason({"name": "r0", "argv": ["--task", "cb", "--save_dir", str(tmp_path / "runs"),
                                                           "--save_name", "r0"]})
        assert reason.startswith("running") and "pid 4242 on host node7" in reason
    assert run_files.run_status(str(folder)) == "partial" and run_files.lock_holder(str(folder)) is None


def test_records_of_runs_without_a_prompt_are_vouched_for():
    """A head-only or fine-tuning run writes "norms": null (no prompt to measure): a valid record, as every committed
    head-only record of docs/results/runs is."""
    import run_files

    record = ROOT / "docs" / "results" / "runs" / "sst2-head_only-len0-lr0.01-seed1"
    args = json.loads((record / "args.json").read_text())
    results = json.loads((record / "results.json").read_text())
    assert results["norms"] is None and run_files.run_problem(args, results) is None
    assert run_files.run_problem(args, {**results, "norms": [1.0]}) == "results.json's train or norms is not an object"
