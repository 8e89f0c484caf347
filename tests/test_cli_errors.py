"""Bad input through the CLI: each case gives exit code 2, exactly one line on stderr naming the problem and the
fix, no traceback, and leaves every existing file untouched (hashes of a whole workspace: data, a finished run,
an interrupted run with its checkpoint) and creates nothing."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import train
from conftest import run_py


def snapshot(folder):
    """Every file's sha256 and every folder, so that a created folder counts as a change too."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def errors_ws(tiny_t5_dir, data_dir, tmp_path_factory):
    """A workspace: CB data (good and broken copies), bad prompt files, bad models, a finished run, an interrupted
    run that has a checkpoint."""
    w = tmp_path_factory.mktemp("errors_ws")
    cb = data_dir / "super_glue" / "CB"

    def cb_copy(name, train_text):
        d = w / name / "super_glue" / "CB"
        d.mkdir(parents=True)
        (d / "train.jsonl").write_text(train_text)
        shutil.copy(cb / "val.jsonl", d / "val.jsonl")
        return w / name

    lines = (cb / "train.jsonl").read_text().splitlines()
    cb_copy("good", "\n".join(lines) + "\n")
    cb_copy("malformed", "\n".join(lines[:2] + ['{"premise": "p", "hypothesis": '] + lines[2:]) + "\n")
    cb_copy("empty", "")
    row = json.loads(lines[0])
    cb_copy("badlabel", "\n".join(lines[:6] + [json.dumps({**row, "label": "maybe"})]) + "\n")
    (w / "nocb" / "super_glue").mkdir(parents=True)
    np.save(w / "shape.npy", np.zeros((3, 32), np.float32))
    np.save(w / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(w / "strings.npy", np.array([["x"] * 32] * 10))
    np.save(w / "nan.npy", np.full((10, 32), np.nan, np.float32))
    (w / "not_a_dir").write_text("a file where a folder is expected")
    broken = w / "broken_model"
    shutil.copytree(tiny_t5_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    bert = w / "bert_model"
    shutil.copytree(tiny_t5_dir, bert)
    cfg = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    (w / "empty_model").mkdir()

    base = ["--task", "rte_superglue", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
            "--freeze_weights", "1", "--select_k_per_class", "4", "--limit_val_set", "4", "--num_epochs", "2",
            "--save_dir", str(w / "runs"), "--progress", "0"]
    assert train.main(base + ["--save_name", "finished"]) == 0
    stopped = run_py(["tests/fault_runner.py", "term_at_step:1", "--", *base, "--save_name", "interrupted",
                      "--batch_size", "2"], env={"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"})
    assert stopped.returncode == 75, stopped.stderr
    shutil.copytree(w / "runs" / "interrupted", w / "runs" / "torn")
    (w / "runs" / "torn" / "train_state.pt").write_bytes(b"torn")
    return w


# (extra arguments, expected text in the one-line message). {w}: the workspace. Later flags override earlier ones.
CASES = [
    (["--task", "nope"], "unknown task 'nope' (valid: cola, sst2"),
    (["--prefix_MLP", "MLP9"], "unknown --prefix_MLP 'MLP9'; valid: None, MLP1, MLP2, LSTM, LSTM1, LSTM2, transformer"),
    (["--prefix_len", "0", "--prefix_MLP", "MLP1"], "needs a prompt: set --prefix_len > 0"),
    (["--prefix_len", "0", "--freeze_weights", "1"], "trains nothing: use --freeze_weights 0"),
    (["--batch_size", "0"], "--batch_size must be a positive integer, got 0"),
    (["--num_epochs", "-1"], "--num_epochs must be a positive integer"),
    (["--seq_len", "0"], "--seq_len must be a positive integer"),
    (["--bottleneck_size", "0", "--prefix_MLP", "MLP1"], "--bottleneck_size must be a positive integer"),
    (["--prefix_len", "-3"], "--prefix_len must be >= 0"),
    (["--prefix_len", "600"], "leaves no room for input in --seq_len 512"),
    (["--lr", "0"], "learning rates must be positive"),
    (["--prefix_MLP", "MLP1", "--mlp_lr", "-1"], "learning rates must be positive"),
    (["--weight_decay", "-1"], "--weight_decay must be >= 0"),
    (["--mlp_dropout", "1.5", "--prefix_MLP", "MLP1"], "--mlp_dropout must be in [0, 1)"),
    (["--select_k_per_class", "0"], "--select_k_per_class must be -1 (all) or a positive count"),
    (["--limit_val_set", "-5"], "--limit_val_set must be -1 (all) or a positive count"),
    (["--save_every_steps", "-1"], "--save_every_steps must be >= 0"),
    (["--eval_every", "-2"], "--eval_every must be >= 0"),
    (["--nonlinearity", "tanh"], "--nonlinearity only applies to --prefix_MLP MLP1/MLP2"),
    (["--residual", "0"], "--residual applies to a reparameterization; with --prefix_MLP None there is none"),
    (["--prefix_MLP", "MLP1", "--mlp2_shared_weights", "1"], "--mlp2_shared_weights 1 only applies to --prefix_MLP MLP2"),
    (["--random_prompt_init", "1", "--prefix_path", "{w}/shape.npy"], "choose the initial prompt: keep one"),
    (["--prompt_init", "vocab", "--random_prompt_init", "1"], "conflicts with --random_prompt_init 1"),
    (["--prompt_init", "file"], "--prompt_init file needs --prefix_path"),
    (["--prompt_init", "zeros"], "unknown --prompt_init 'zeros'; valid: vocab, vocab_top5000"),
    (["--freeze_weights", "0", "--freeze_except", "shared"], "only acts with --freeze_weights 1"),
    (["--device", "cuda:7"], "CUDA is not available"),
    (["--device", "tpu"], "is not a device name"),
    (["--nonlinearity", "gelu"], "argument --nonlinearity: invalid choice: 'gelu'"),
    (["--batch_size", "eight"], "argument --batch_size: invalid int value: 'eight'"),
    (["--resume", "sometimes"], "argument --resume: invalid choice"),
    (["--lerning_rate", "0.3"], "unrecognized argument --lerning_rate: did you mean --learning_rate?"),  # an alias
    (["--prefix_path", "{w}/shape.npy"], "shape [3, 32]; expected a numeric [prefix_len, H] = [10, 32] array"),
    (["--prefix_path", "{w}/object.npy"], "cannot load, it needs pickle"),
    (["--prefix_path", "{w}/strings.npy"], "expected a numeric [prefix_len, H]"),
    (["--prefix_path", "{w}/nan.npy"], "contains NaN or inf values"),
    (["--prefix_path", "{w}/missing.npy"], "no such file"),
    (["--task", "wsc", "--prompt_init", "class_labels"], "needs a task with label words"),
    (["--model_name", "{w}/empty_model"], "no config.json there"),
    (["--model_name", "{w}/broken_model"], "cannot load model"),
    (["--model_name", "{w}/bert_model"], "is a 'bert' model; train.py tunes prompts for T5"),
    (["--task", "cb", "--data_dir", "{w}/nocb"], "missing data file"),
    (["--task", "cb", "--data_dir", "{w}/malformed"], "malformed JSON in"),
    (["--task", "cb", "--data_dir", "{w}/empty"], "empty data file"),
    (["--task", "cb", "--data_dir", "{w}/badlabel"], "label 'maybe' is outside the cb label set"),
    (["--save_name", "finished", "--lr", "0.1"], "holds a run with other arguments (--lr 0.3 (saved) != 0.1 (now))"),
    (["--save_name", "interrupted", "--batch_size", "4"], "--batch_size 2 (saved) != 4 (now)"),
    (["--save_name", "interrupted", "--batch_size", "2", "--resume", "never"], "pass --resume auto to continue it"),
    (["--save_name", "torn", "--batch_size", "2"], "cannot read the checkpoint"),
    (["--save_dir", "{w}/not_a_dir"], "is a file; choose another --save_dir"),
    (["--save_dir", "/proc/no_such_dir"], "cannot write under /proc"),
]


@pytest.mark.slow  # its workspace holds a run stopped by tests/fault_runner.py in a child process
@pytest.mark.parametrize("extra,message", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(extra, message, errors_ws, tiny_t5_dir, data_dir, capsys):
    argv = ["--task", "rte_superglue", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
            "--freeze_weights", "1", "--select_k_per_class", "4", "--limit_val_set", "4", "--num_epochs", "2",
            "--save_dir", str(errors_ws / "runs"), "--save_name", "new", "--progress", "0"]
    extra = [a.replace("{w}", str(errors_ws)) for a in extra]
    before = snapshot(errors_ws)
    try:
        code = train.main(argv + extra)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("train.py: error: "), err
    assert message in err, err
    assert "Traceback" not in err
    assert snapshot(errors_ws) == before


def test_catalogue_is_large_and_distinct():
    assert len(CASES) >= 25 and len({m for _, m in CASES}) >= 25


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", [
    (["--batch_size", "eight"], "invalid int value"),
    (["--prefix_MLP", "MLP9"], "unknown --prefix_MLP"),
    (["--task", "cb", "--data_dir", "{w}/malformed"], "malformed JSON in"),
])
def test_the_real_process_prints_one_line_and_exits_2(extra, message, errors_ws, tiny_t5_dir, data_dir):
    argv = ["--task", "rte_superglue", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
            "--save_dir", str(errors_ws / "runs"), "--save_name", "new", "--progress", "0"]
    before = snapshot(errors_ws)
    proc = run_py(["train.py", *argv, *[a.replace("{w}", str(errors_ws)) for a in extra]], env={"PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert snapshot(errors_ws) == before
