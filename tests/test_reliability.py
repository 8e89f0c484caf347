"""Reliability II: no silent wrong result, every bad input a one-line error (exit 2), every stop request exit 75.

Each refusal case checks: exit 2, exactly one stderr line, no traceback, no file of the workspace changed, and
nothing written anywhere but (at most) inside save_dir/save_name. Subprocess runs: marked slow."""
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_py

pytestmark = pytest.mark.slow
ENV = {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(Path(folder).rglob("*"))}


@pytest.fixture(scope="module")
def ws(tiny_t5_dir, data_dir, tmp_path_factory):
    """Workspace: a finished run, an interrupted run with a checkpoint, model and data variants, prompt files."""
    w = tmp_path_factory.mktemp("rel")
    cb = data_dir / "super_glue" / "CB"
    rows = [json.loads(line) for line in (cb / "train.jsonl").read_text().splitlines()]

    def data(name, edit=None):
        d = w / name / "super_glue" / "CB"
        d.mkdir(parents=True)
        out = [dict(r) for r in rows]
        if edit:
            edit(out)
        (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
        shutil.copy(cb / "val.jsonl", d / "val.jsonl")

    data("good")
    data("other", lambda rs: rs[0].update(premise=rs[0]["premise"] + " (edited)"))
    data("null", lambda rs: rs[1].update(premise=None))
    notok = w / "no_tokenizer"
    notok.mkdir()
    for f in tiny_t5_dir.iterdir():
        if f.name.startswith(("config", "generation")) or f.suffix == ".safetensors":
            shutil.copy(f, notok / f.name)
    nolayers = w / "no_layers"
    shutil.copytree(tiny_t5_dir, nolayers)
    cfg = json.loads((nolayers / "config.json").read_text())
    (nolayers / "config.json").write_text(json.dumps({**cfg, "num_layers": 0, "num_decoder_layers": 0}))
    np.savez(w / "p.npz", a=np.zeros((10, 32), np.float32))
    (w / "zero.npy").write_bytes(b"")
    np.save(w / "huge.npy", np.full((10, 32), 1e300))
    with open(w / "claims.npy", "wb") as f:  # a header claiming a (1e9, 1e6) array, and no data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**6)})
    os.symlink(w / "nowhere", w / "dangling")

    base = base_args(tiny_t5_dir, w)
    assert run(base + ["--save_name", "finished"]).returncode == 0
    stopped = run_py(["tests/fault_runner.py", "term_at_step:1", "--", *base, "--save_name", "interrupted",
                      "--batch_size", "2"], env=ENV)
    assert stopped.returncode == 75, stopped.stderr
    return w


def base_args(model, w):
    return ["--task", "cb", "--data_dir", str(w / "good"), "--model_name", str(model), "--freeze_weights", "1",
            "--select_k_per_class", "2", "--limit_val_set", "2", "--num_epochs", "2", "--save_dir", str(w / "runs"),
            "--progress", "0"]


def run(args, env=None):
    return run_py(["train.py", *args], env={**ENV, **(env or {})})


def copy_run(ws, name, new):
    shutil.copytree(ws / "runs" / name, ws / "runs" / new)
    return ws / "runs" / new


def refused(ws, args, expect, env=None, cwd_check=True):
    before = snapshot(ws)
    proc = run(args, env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert expect in lines[0], lines[0]
    after = snapshot(ws)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:5]
    return lines[0]


# (extra arguments, expected text); {w}: the workspace, {m}: the tiny model. Later flags override earlier ones.
CASES = [
    (["--model_name", "{w}/no_tokenizer"], "has no tokenizer files"),
    (["--model_name", "{w}/no_layers"], "no layers"),
    (["--lr", "inf"], "learning rates must be positive"),
    (["--lr", "nan"], "learning rates must be positive"),
    (["--weight_decay", "inf"], "--weight_decay must be >= 0 and finite"),
    (["--weight_decay", "nan"], "--weight_decay must be >= 0 and finite"),
    (["--prefix_path", "{w}/huge.npy"], "NaN or inf"),
    (["--prefix_path", "{w}/p.npz"], "archive"),
    (["--prefix_path", "{w}/zero.npy"], "not a .npy array"),
    (["--prefix_path", "{w}/claims.npy"], "shape [1000000000, 1000000]"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["--seed", "4294967296"], "--seed must be in"),
    (["--data_seed", "-1"], "--data_seed must be in"),
    (["--save_dir", "{w}/dangling"], "broken symbolic link"),
    (["--save_name", "x" * 300], "bytes long"),
    (["--save_name", "../../x"], "plain folder name"),
    (["--save_name", "/tmp/abs"], "plain folder name"),
    (["--save_name", ""], "plain folder name"),
    (["--device", "meta"], "not a device name"),
    (["--prefix_len", "1000000", "--seq_len", "2000000"], "out of memory"),
    (["--data_dir", "{w}/null"], "field 'premise'"),
]


@pytest.mark.parametrize("extra, expect", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_input_is_one_line_exit_2(ws, tiny_t5_dir, extra, expect):
    extra = [a.format(w=ws, m=tiny_t5_dir) for a in extra]
    args = base_args(tiny_t5_dir, ws) + ["--save_name", "new"] + extra
    refused(ws, args, expect)


@pytest.mark.parametrize("env, expect", [({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a number"),
                                         ({"WORLD_SIZE": "2"}, "not a valid torchrun environment")])
def test_bad_torchrun_environment(ws, tiny_t5_dir, env, expect):
    refused(ws, base_args(tiny_t5_dir, ws) + ["--save_name", "new"], expect, env=env)


def _bad_state(path, obj):
    torch.save(obj, path / "train_state.pt")


STATE_EDITS = {
    "dict": lambda p, s: _bad_state(p, {"foo": 1}),
    "list": lambda p, s: _bad_state(p, [1, 2]),
    "checkpoint": lambda p, s: shutil.copy(p.parent / "finished" / "checkpoint.pt", p / "train_state.pt"),
    "epoch_str": lambda p, s: _bad_state(p, {**s, "epoch": "1"}),
    "args_list": lambda p, s: _bad_state(p, {**s, "args": [1]}),
    "prompt_shape": lambda p, s: _bad_state(p, {**s, "trainable": {**s["trainable"], "prompt": torch.zeros(3, 3)}}),
    "rng": lambda p, s: _bad_state(p, {**s, "rng": {"python": 1}}),
    "optimizer": lambda p, s: _bad_state(p, {**s, "optimizer": {"state": {}, "param_groups": []}}),
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_training_state_of_the_wrong_structure_is_refused(ws, tiny_t5_dir, edit):
    folder = copy_run(ws, "interrupted", f"state_{edit}")
    STATE_EDITS[edit](folder, torch.load(folder / "train_state.pt", weights_only=True))
    refused(ws, base_args(tiny_t5_dir, ws) + ["--save_name", folder.name, "--batch_size", "2"],
            "--overwrite 1")


@pytest.mark.parametrize("name, text", [("results.json", "[]"), ("results.json", "1"), ("args.json", "[1]")])
def test_finished_run_files_of_the_wrong_structure_are_refused(ws, tiny_t5_dir, name, text):
    folder = copy_run(ws, "finished", f"files_{name}_{len(text)}{text[0]}")
    (folder / name).write_text(text)
    refused(ws, base_args(tiny_t5_dir, ws) + ["--save_name", folder.name], "is not a JSON object")


def test_resume_against_other_data_is_refused(ws, tiny_t5_dir):
    folder = copy_run(ws, "interrupted", "other_data")
    args = base_args(tiny_t5_dir, ws) + ["--save_name", folder.name, "--batch_size", "2",
                                         "--data_dir", str(ws / "other")]
    refused(ws, args, "the data differs")


def test_results_record_the_data_fingerprint_and_the_arguments(ws):
    res = json.loads((ws / "runs" / "finished" / "results.json").read_text())
    assert len(res["data_fingerprint"]) == 64 and res["args"]["lr"] == 0.3 and "save_dir" not in res["args"]


def test_a_stale_folder_never_claims_complete(ws, tiny_t5_dir):
    """Over a finished run, --overwrite 1 --lr 0.1 killed early; the old command again must not say complete."""
    folder = copy_run(ws, "finished", "stale")
    base = base_args(tiny_t5_dir, ws) + ["--save_name", folder.name, "--batch_size", "64"]  # CB: 4 steps an epoch
    killed = run_py(["tests/fault_runner.py", "kill_at_step:6", "--", *base, "--overwrite", "1", "--lr", "0.1"],
                    env=ENV)
    assert killed.returncode == -signal.SIGKILL
    assert not (folder / "results.json").exists() or not json.loads((folder / "results.json").read_text())["complete"]
    again = run(base)
    assert "already complete" not in again.stdout
    assert again.returncode == 2 and "--lr 0.1 (saved) != 0.3 (now)" in again.stderr


def test_kill_before_the_first_checkpoint_then_rerun_starts_over(ws, tiny_t5_dir):
    """Killed after the first results.json, before any train_state.pt: the same command runs the run again."""
    base = base_args(tiny_t5_dir, ws) + ["--save_name", "early", "--batch_size", "64"]  # CB: 4 steps an epoch
    killed = run_py(["tests/fault_runner.py", "kill_at_step:6", "--", *base], env=ENV)  # epoch 1: results.json exists
    folder = ws / "runs" / "early"
    assert killed.returncode == -signal.SIGKILL and (folder / "results.json").exists()
    os.unlink(folder / "train_state.pt")  # as if killed before the first checkpoint
    (folder / ".tmp-leftover").write_bytes(b"a write cut short")
    again = run(base)
    assert again.returncode == 0, again.stderr
    assert json.loads((folder / "results.json").read_text())["complete"] is True
    assert not [p for p in folder.iterdir() if p.name.startswith((".tmp-", ".lock"))]


def test_a_second_run_into_a_locked_folder_is_refused(ws, tiny_t5_dir):
    folder = ws / "runs" / "locked"
    folder.mkdir()
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("pid 12345 on host elsewhere\n")
        f.flush()
        line = refused(ws, base_args(tiny_t5_dir, ws) + ["--save_name", "locked"], "is in use by")
    assert "pid 12345 on host elsewhere" in line


def test_two_runs_at_once_never_mix_one_folder(ws, tiny_t5_dir):
    base = base_args(tiny_t5_dir, ws) + ["--save_name", "race", "--num_epochs", "3"]
    first = subprocess.Popen([sys.executable, "train.py", *base], cwd=ROOT, env={**os.environ, **ENV},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (ws / "runs" / "race" / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = run(base + ["--lr", "0.1", "--overwrite", "1"])
    first.communicate(timeout=600)
    assert first.returncode == 0
    if second.returncode != 0:  # refused while the first held the folder
        assert second.returncode == 2 and "is in use by pid" in second.stderr
        args = json.loads((ws / "runs" / "race" / "args.json").read_text())
        assert args["lr"] == 0.3
    res = json.loads((ws / "runs" / "race" / "results.json").read_text())
    assert res["args"] == {k: v for k, v in json.loads((ws / "runs" / "race" / "args.json").read_text()).items()
                           if k in res["args"]}


def _start(args, wait_for):
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not wait_for() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_request_at_start_up_exits_75(ws, tiny_t5_dir, sig):
    """Before training starts (the folder is claimed, nothing trained): exit 75 with one line; rerun completes."""
    args = base_args(tiny_t5_dir, ws) + ["--save_name", f"startup_{sig.name}"]
    proc = _start(args, lambda: (ws / "runs" / f"startup_{sig.name}" / ".lock").exists())
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert run(args).returncode == 0


def test_sigint_in_the_loop_checkpoints_and_says_so(ws, tiny_t5_dir):
    args = base_args(tiny_t5_dir, ws) + ["--save_name", "ctrl_c", "--batch_size", "1", "--save_every_steps", "1"]
    folder = ws / "runs" / "ctrl_c"
    proc = _start(args, lambda: (folder / "train_state.pt").exists())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 75 and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "run the same command again" in err.splitlines()[-1]
    assert run(args).returncode == 0


def test_after_exit_75_the_hint_warns_about_overwrite(ws, tiny_t5_dir):
    args = base_args(tiny_t5_dir, ws) + ["--save_name", "ow", "--batch_size", "1", "--overwrite", "1"]
    stopped = run_py(["tests/fault_runner.py", "term_at_step:2", "--", *args], env=ENV)
    assert stopped.returncode == 75 and "WITHOUT --overwrite 1" in stopped.stderr


# ---- a stop at any moment (tests/fault_runner.py stop_in:PHASE:SIGNAL) ------------------------------------------
# (phase, signal, exit code): every signal in several phases; 75 until the run is complete, 0 from then on
STOP_PHASES = [("imports", signal.SIGTERM, 75), ("model_load", signal.SIGUSR1, 75), ("data_load", signal.SIGINT, 75),
               ("resume_restore", signal.SIGTERM, 75), ("training", signal.SIGUSR1, 75),
               ("evaluation", signal.SIGINT, 75), ("final_save", signal.SIGTERM, 0),
               ("adapter_export", signal.SIGUSR1, 0), ("shutdown", signal.SIGINT, 0), ("teardown", signal.SIGTERM, 0)]


@pytest.mark.parametrize("phase, sig, code", STOP_PHASES, ids=[f"{p}-{s.name}" for p, s, _ in STOP_PHASES])
def test_a_stop_in_any_phase_exits_75_resumable_or_0_complete(tiny_t5_anywhere, fixture_data_dir, tmp_path, phase,
                                                                sig, code):
    """The signal lands inside the phase, inside code that catches Exception: never 1, 2 or a signal death; 75
    leaves a folder the same command continues, 0 a complete run; the advice never names --overwrite."""
    args = ["--task", "cb", "--data_dir", fixture_data_dir, "--model_name", tiny_t5_anywhere, "--freeze_weights",
            "1", "--num_epochs", "1", "--batch_size", "4", "--save_dir", tmp_path, "--save_name", "run",
            "--progress", "0", "--save_adapter", "auto" if phase == "adapter_export" else "0"]
    folder = tmp_path / "run"
    if phase == "resume_restore":
        first = run_py(["tests/fault_runner.py", "term_at_step:2", "--", *args], env=ENV)
        assert first.returncode == 75 and (folder / "train_state.pt").exists(), first.stderr[-2000:]
    proc = run_py(["tests/fault_runner.py", f"stop_in:{phase}:{sig.name}", "--", *args], env=ENV)
    assert f"fault_runner: {sig.name} in {phase}" in proc.stderr, proc.stderr[-2000:]  # delivered in the phase
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "raised" not in proc.stderr and "--overwrite" not in proc.stderr
    if code == 75:
        again = run_py(["train.py", *args], env=ENV)
        assert again.returncode == 0, again.stderr[-2000:]
    results = json.loads((folder / "results.json").read_text())
    assert results["complete"] is True and not (folder / "train_state.pt").exists()
    if phase == "adapter_export":
        assert (folder / "adapter" / "adapter_config.json").is_file()


# ---- run files that lie: a corrupt train_state.pt is bad input (exit 2 naming it), not divergence -------------
CORRUPT_STATES = {
    "epoch_past": lambda s: {**s, "epoch": s["args"]["num_epochs"] + 1},
    "nan_prompt": lambda s: {**s, "trainable": {**s["trainable"], "prompt": s["trainable"]["prompt"] * float("nan")}},
    "inf_optimizer": lambda s: {**s, "optimizer": {**s["optimizer"], "state": {
        k: {n: (t * float("inf") if torch.is_tensor(t) and t.is_floating_point() and t.ndim else t)
            for n, t in v.items()} for k, v in s["optimizer"]["state"].items()}}},
    "history_length": lambda s: {**s, "history": {**s["history"], "train_loss": s["history"]["train_loss"] + [1.0]}},
    "step_past": lambda s: {**s, "step": 10**6},
}


@pytest.mark.parametrize("edit", list(CORRUPT_STATES))
def test_a_corrupt_training_state_is_refused_naming_it(ws, tiny_t5_dir, edit):
    folder = copy_run(ws, "interrupted", f"corrupt_{edit}")
    state = torch.load(folder / "train_state.pt", weights_only=True)
    torch.save(CORRUPT_STATES[edit](state), folder / "train_state.pt")
    line = refused(ws, base_args(tiny_t5_dir, ws) + ["--save_name", folder.name, "--batch_size", "2"],
                   "corrupt checkpoint")
    assert "train_state.pt" in line and "--lr" not in line


# ---- predict.py and export_peft.py on a finished run's files of the wrong kind ---------------------------------
def _pickled(path):
    torch.save({"projected_prompt": torch.zeros(10, 32), "extra": Path("/")}, path)  # needs a pickled class


def _torn(path):
    path.write_bytes(path.read_bytes()[:100])


def _nan_prompt(path):
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "projected_prompt": ckpt["projected_prompt"] * float("nan")}, path)


FINISHED_EDITS = {  # file -> how it is spoiled
    "checkpoint_pickled": ("checkpoint.pt", _pickled),
    "checkpoint_torn": ("checkpoint.pt", _torn),
    "checkpoint_nan": ("checkpoint.pt", _nan_prompt),
    "checkpoint_list": ("checkpoint.pt", lambda p: torch.save([1, 2], p)),
    "prompt_pickled": ("prompt.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)),
    "prompt_nan": ("prompt.npy", lambda p: np.save(p, np.full((10, 32), np.nan, np.float32))),
    "args_types": ("args.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "seq_len": "64"}))),
    "args_list": ("args.json", lambda p: p.write_text("[1]")),
    "results_other_args": ("results.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "args": {
        **json.loads(p.read_text())["args"], "lr": 0.01}}))),
    "results_nan": ("results.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()),
                                                                       "best_val_score": float("nan")}))),
}


@pytest.mark.parametrize("script", ["predict", "export_peft"])
@pytest.mark.parametrize("edit", list(FINISHED_EDITS))
def test_scripts_refuse_a_finished_runs_spoiled_files(ws, tmp_path, script, edit):
    name, spoil = FINISHED_EDITS[edit]
    if script == "predict" and name == "prompt.npy":
        pytest.skip("predict.py reads checkpoint.pt, not prompt.npy")
    folder = copy_run(ws, "finished", f"spoiled_{script}_{edit}")
    spoil(folder / name)
    argv = ["scripts/predict.py", folder] if script == "predict" else ["scripts/export_peft.py", folder,
                                                                        tmp_path / "adapter"]
    proc = run_py(argv, env=ENV)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith(f"{script}.py: error:")
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("case", ["input_fifo", "out_fifo", "out_symlink"])
def test_predict_never_blocks_on_or_writes_through_special_files(ws, tmp_path, case):
    target = tmp_path / "mine.jsonl"
    target.write_text("mine\n")
    special = tmp_path / "special"
    os.mkfifo(special) if case != "out_symlink" else os.symlink(target, special)
    flag = "--input" if case == "input_fifo" else "--out"
    proc = run_py(["scripts/predict.py", ws / "runs" / "finished", flag, special], env=ENV, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert target.read_text() == "mine\n" and os.path.lexists(special)


def test_prefix_path_fifo_is_refused_not_waited_on(ws, tiny_t5_dir):
    os.mkfifo(ws / "prompt_fifo")
    refused(ws, base_args(tiny_t5_dir, ws) + ["--save_name", "new", "--prefix_path", str(ws / "prompt_fifo")],
            "not a regular file")


def test_train_py_ends_with_mains_code_after_atexit_functions_and_flushed_output():
    """train.py as __main__ ends through train.leave (no interpreter teardown) as the interpreter would end: a
    non-daemon thread still working is waited for, an idle executor's workers are told to stop (no hang), functions
    registered with atexit run, output still in the buffers (no newline, no flush) reaches the pipe, and the exit
    code is main's."""
    code = ("import atexit, runpy, sys, threading, time, concurrent.futures as cf; "
            "ex = cf.ThreadPoolExecutor(1); ex.submit(int).result(); "  # an idle worker thread, not a daemon
            "threading.Thread(target=lambda: (time.sleep(1), print('thread done', end=' '))).start(); "
            "atexit.register(lambda: print('atexit ran', flush=True)); "
            "print('buffered', end=' '); sys.argv = ['train.py', '--task', 'cb', '--lr', '-1', '--save_name', 'x']; "
            "runpy.run_path('train.py', run_name='__main__')")
    r = run_py(["-c", code], timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "buffered thread done atexit ran\n"
    assert r.stderr.strip() == "train.py: error: learning rates must be positive and finite, got --lr -1.0"
