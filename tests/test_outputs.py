"""Outputs researchers expect beside results.json: a log fit for files and SLURM, metrics.jsonl, all_results.json,
predictions_{split}.jsonl and TensorBoard events (read back). One 2-epoch run on the committed CB fixture."""
import json

import pytest

from conftest import run_py

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outputs_run(tiny_t5_anywhere, fixture_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    args = ["train.py", "--task", "cb", "--data_dir", str(fixture_data_dir), "--model_name", str(tiny_t5_anywhere),
            "--freeze_weights", "1", "--prefix_MLP", "MLP1", "--num_epochs", "2", "--batch_size", "4",
            "--get_test_subset", "1", "--early_stopping", "1", "--log_every_steps", "2", "--report_to", "tensorboard",
            "--save_dir", str(out), "--save_name", "r"]
    proc = run_py(args, env={"PYTHONWARNINGS": "ignore"})  # no --progress: stdout/stderr are pipes, not terminals
    assert proc.returncode == 0, proc.stderr
    return out / "r", proc


def test_a_redirected_log_has_no_cursor_codes_and_one_line_per_epoch(outputs_run):
    _, proc = outputs_run
    text = proc.stdout + proc.stderr
    assert "\r" not in text and "\x1b" not in text
    epochs = [line for line in text.splitlines() if " epoch " in line and "train loss" in line]
    assert len(epochs) == 2
    for line in epochs:  # timestamp, speed and the validation on the same line
        assert line[:4].isdigit() and " s, " in line and "steps/s" in line and "validation score" in line


def test_metrics_jsonl_has_step_losses_and_epoch_summaries(outputs_run):
    folder, _ = outputs_run
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "train_loss" in r]
    assert len(epochs) == 2 and all("eval_score" in r and "epoch_seconds" in r for r in epochs)
    assert steps and all(r["step"] % 2 == 0 and r["lr"] == 0.3 for r in steps)


def test_all_results_json_is_flat_like_run_glue(outputs_run):
    folder, _ = outputs_run
    flat = json.loads((folder / "all_results.json").read_text())
    for key in ("epoch", "train_runtime", "train_samples", "train_loss", "eval_score", "eval_loss", "eval_acc",
                "test_score", "test_loss", "test_acc", "test_f1_macro"):
        assert key in flat, key
    results = json.loads((folder / "results.json").read_text())
    assert flat["test_score"] == results["test"]["score"] and flat["best_epoch"] == results["best_epoch"]
    # as the Trainer: epoch = epochs trained (not the best one), train_loss = the mean over the whole run
    losses = results["train"]["loss"]
    assert flat["epoch"] == float(len(losses)) == float(results["args"]["num_epochs"])
    assert flat["train_loss"] == pytest.approx(sum(losses) / len(losses))
    best = next(e for e in results["validation"] if e["epoch"] == results["best_epoch"])
    assert flat["eval_score"] == best["score"] and flat["eval_loss"] == best["loss"]


def test_predictions_files_name_each_row(outputs_run):
    folder, _ = outputs_run
    results = json.loads((folder / "results.json").read_text())
    for split, n in (("val", results["n_examples"]["validation"]), ("test", results["n_examples"]["test"])):
        rows = [json.loads(line) for line in (folder / f"predictions_{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n and all(set(r) == {"id", "input", "target", "prediction"} for r in rows)
        assert all(r["target"] in ("entailment", "contradiction", "neutral") and "</s>" not in r["input"]
                   for r in rows)


def test_tensorboard_events_read_back(outputs_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, _ = outputs_run
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/train_loss", "eval/score", "eval/loss"} <= tags
    n = json.loads((folder / "results.json").read_text())["n_examples"]["train"]
    per_epoch = -(-n // 4)
    assert [e.step for e in acc.Scalars("eval/score")] == [per_epoch, 2 * per_epoch]


def test_predict_scores_a_finished_run_and_new_rows(outputs_run, fixture_data_dir, tmp_path):
    folder, _ = outputs_run
    results = json.loads((folder / "results.json").read_text())
    proc = run_py(["scripts/predict.py", str(folder), "--out", str(tmp_path / "p.jsonl")])
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and "score" in proc.stderr  # the full validation file of the fixture
    assert all(set(r) == {"id", "input", "target", "prediction"} for r in rows)  # as predictions_{split}.jsonl
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"premise": "The cat sat.", "hypothesis": "A cat sat."}) + "\n")
    proc = run_py(["scripts/predict.py", str(folder), "--input", str(new)])
    assert proc.returncode == 0, proc.stderr
    [record] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert set(record) == {"id", "input", "prediction"}  # no label, no target
    assert "The cat sat." in record["input"] and "A cat sat." in record["input"]
    assert results["complete"] is True
    for folder_arg, says in ((tmp_path, "is not a finished run folder (it has no args.json)"),
                             (tmp_path / "nope", "no such run folder")):
        bad = run_py(["scripts/predict.py", str(folder_arg)])
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
        assert says in bad.stderr and "save_dir/save_name" in bad.stderr and "--overwrite" not in bad.stderr


@pytest.mark.parametrize("flags, says", [
    (["--out", "{tmp}/no_such_folder/p.jsonl"], "does not exist: create it"),
    (["--out", "{tmp}"], "is a folder: pass a file path"),
    (["--split", "train", "--input", "{tmp}/rows.jsonl"], "--split and --input are exclusive"),
    (["--input", "{tmp}/missing.jsonl"], "no such file"),
    (["--batch_size", "0"], "pass a positive number"),
])
def test_predict_refuses_bad_flags_before_any_work(outputs_run, tmp_path, flags, says):
    folder, _ = outputs_run
    (tmp_path / "rows.jsonl").write_text(json.dumps({"premise": "a", "hypothesis": "b"}) + "\n")
    proc = run_py(["scripts/predict.py", str(folder)] + [f.format(tmp=tmp_path) for f in flags])
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no_such_folder").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_results_json_records_what_a_constant_prediction_scores_on_the_test_half(outputs_run):
    import data_utils

    folder, _ = outputs_run
    results = json.loads((folder / "results.json").read_text())
    targets = [json.loads(line)["target"] for line in (folder / "predictions_test.jsonl").read_text().splitlines()]
    assert results["test"]["constant_score"] == data_utils.constant_score(data_utils.TASKS["cb"], targets)
    assert 0 < results["test"]["constant_score"] < 1
