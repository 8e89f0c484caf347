"""Outputs researchers expect beside results.json: a log fit for files and SLURM, metrics.jsonl, all_results.json,
predictions_{split}.jsonl and TensorBoard events (read back). One 2-epoch run on the committed CB fixture."""
import ast
import json
import re

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
    epochs = [line for line in text.splitlines() if " epoch " in line and "epoch_loss" in line]
    assert len(epochs) == 2 and " epoch 1: " in epochs[0] and " epoch 2: " in epochs[1]  # as metrics.jsonl counts
    for line in epochs:  # timestamp, speed and the validation on the same line
        assert line[:4].isdigit() and " s, " in line and "steps/s" in line and "eval_score" in line


def test_metrics_jsonl_has_step_losses_and_epoch_summaries(outputs_run):
    folder, _ = outputs_run
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "epoch_loss" in r]
    assert len(epochs) == 2 and all("eval_score" in r and "epoch_runtime" in r for r in epochs)
    assert [r["epoch"] for r in epochs] == [1.0, 2.0]  # as the Trainer: 1.0 after the first epoch
    assert steps and all(r["step"] % 2 == 0 and r["learning_rate"] == 0.3 and r["grad_norm"] > 0 for r in steps)
    per_epoch = epochs[0]["step"]
    assert all(r["epoch"] == pytest.approx(r["step"] / per_epoch, abs=1e-4) for r in steps)
    assert records[-1].keys() == {"epoch", "step", "train_runtime", "train_samples_per_second", "train_loss"}


def test_all_results_json_is_flat_like_run_glue(outputs_run):
    folder, _ = outputs_run
    flat = json.loads((folder / "all_results.json").read_text())
    for key in ("epoch", "train_runtime", "train_samples", "train_loss", "eval_score", "eval_loss", "eval_accuracy",
                "eval_f1", "test_score", "test_loss", "test_accuracy", "test_f1"):
        assert key in flat, key
    results = json.loads((folder / "results.json").read_text())
    assert flat["test_score"] == results["test"]["score"] and flat["best_epoch"] == results["best_epoch"] + 1
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
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch_loss", "eval/score", "eval/loss",
            "eval/accuracy", "eval/f1", "eval/runtime"} <= tags
    assert not any("/metric" in t or t == "train/lr" for t in tags)  # no unnamed list, no old names
    assert [t for t in tags if t.endswith("train_loss")] == ["train/train_loss"]  # the run's mean, once at the end
    assert len(acc.Scalars("train/train_loss")) == 1
    n = json.loads((folder / "results.json").read_text())["n_examples"]["train"]
    per_epoch = -(-n // 4)
    assert [e.step for e in acc.Scalars("eval/score")] == [per_epoch, 2 * per_epoch]


def test_the_four_outputs_name_every_metric_alike_and_trainer_state_has_log_history(outputs_run):
    """all_results.json, metrics.jsonl, TensorBoard and the log line use the same Hugging Face names (cb: accuracy
    and f1, as evaluate's super_glue names them); trainer_state.json's log_history is metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, proc = outputs_run
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_score" in r]
    names = {k for r in evals for k in r if k.startswith("eval_") and "runtime" not in k and "per_second" not in k}
    assert names == {"eval_loss", "eval_score", "eval_accuracy", "eval_f1"}
    flat = json.loads((folder / "all_results.json").read_text())
    assert names <= set(flat) and {"test_" + n[5:] for n in names} <= set(flat)
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    assert {"eval/" + n[5:] for n in names} <= set(acc.Tags()["scalars"])
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if " epoch " in line and "eval_" in line]
    assert len(lines) == 2 and all(all(f" {n} " in line for n in names) for line in lines)
    for line, r in zip(lines, evals):  # the line's numbers are the record's
        assert f"eval_accuracy {r['eval_accuracy']:.4f}" in line and f"eval_f1 {r['eval_f1']:.4f}" in line
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["log_history"] == records and state["global_step"] == records[-1]["step"]
    best = next(r for r in evals if r["epoch"] == flat["best_epoch"])
    assert state["best_metric"] == best["eval_score"] == flat["eval_score"]
    assert state["epoch"] == flat["epoch"] == 2.0 and state["log_history"][-1]["train_loss"] == flat["train_loss"]


def test_predict_scores_a_finished_run_and_new_rows(outputs_run, fixture_data_dir, tmp_path):
    folder, _ = outputs_run
    results = json.loads((folder / "results.json").read_text())
    proc = run_py(["scripts/predict.py", str(folder), "--split", "validation", "--out", str(tmp_path / "p.jsonl")])
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
    assert "1 rows predicted, none has a label: no score" in proc.stderr
    assert "The cat sat." in record["input"] and "A cat sat." in record["input"]
    assert results["complete"] is True
    for folder_arg, says in ((tmp_path, "is not a finished run folder (it has no args.json)"),
                             (tmp_path / "nope", "no such run folder")):
        bad = run_py(["scripts/predict.py", str(folder_arg)])
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
        assert says in bad.stderr and "save_dir/save_name" in bad.stderr and "--overwrite" not in bad.stderr


@pytest.mark.parametrize("split, key", [("test", "test"), ("val", "validation")])
def test_predict_scores_exactly_the_half_the_run_scored(outputs_run, tmp_path, split, key):
    """A --get_test_subset 1 run: --split test / val are its halves, scored as results.json scored them, and the
    lines are those of predictions_{split}.jsonl."""
    folder, _ = outputs_run
    results = json.loads((folder / "results.json").read_text())
    expected = results["test"] if key == "test" else next(e for e in results["validation"]
                                                          if e["epoch"] == results["best_epoch"])
    proc = run_py(["scripts/predict.py", str(folder), "--split", split, "--out", str(tmp_path / "p.jsonl")])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.jsonl").read_text() == (folder / f"predictions_{split}.jsonl").read_text()
    assert f"{results['n_examples'][key]} labelled rows scored" in proc.stderr
    said = re.search(r"score (\S+) (\{.*\}) eval_loss (\S+)", proc.stderr)
    assert float(said[1]) == expected["score"] and float(said[3]) == expected["loss"]  # exactly
    assert ast.literal_eval(said[2]) == {"eval_accuracy": expected["official"]["acc"],
                                         "eval_f1": expected["official"]["f1_macro"]}


def test_predict_scores_the_labelled_rows_of_an_input_and_predicts_all(outputs_run, tmp_path):
    import data_utils

    folder, _ = outputs_run
    lines = [{"premise": "The cat sat.", "hypothesis": "A cat sat.", "label": "entailment"},
             {"premise": "It rained.", "hypothesis": "It was dry.", "label": "contradiction"},
             {"premise": "He left.", "hypothesis": "He is tall."}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    proc = run_py(["scripts/predict.py", str(folder), "--input", str(tmp_path / "rows.jsonl")])
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [set(r) for r in out] == [{"id", "input", "target", "prediction"}] * 2 + [{"id", "input", "prediction"}]
    assert "2 labelled rows scored; 1 without a label: predicted, not scored" in proc.stderr
    alone = data_utils.evaluate(data_utils.TASKS["cb"], [r["prediction"] for r in out[:2]],
                                [r["target"] for r in out[:2]])  # the score is the labelled rows' alone
    assert f"score {alone['score']} " in proc.stderr


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
