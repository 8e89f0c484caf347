"""Reliability: exact resume after SIGKILL (anywhere, a checkpoint write included), SIGTERM, NaN; atomic files.

Every run here is a real train.py process on the tiny T5 with the MLP's dropout active (0.1), so an RNG
state that was not restored would change the numbers. A resumed run must give the uninterrupted run's prompt,
scores and losses bit for bit.
"""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH, EPOCHS = 16, 3  # CB: 250 rows / batch 16
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}


def train_args(model_dir, data_dir, save_dir, name):
    return ["--task", "cb", "--data_dir", str(data_dir), "--model_name", str(model_dir), "--prefix_MLP", "MLP1",
            "--mlp_dropout", "0.1", "--model_dropout", "0", "--freeze_weights", "1", "--early_stopping", "1", "--get_test_subset", "1",
            "--batch_size", "16", "--num_epochs", str(EPOCHS), "--train_eval_batches", "2", "--save_every_steps", "5",
            "--save_dir", str(save_dir), "--save_name", name, "--progress", "0"]


def run(args, fault=None):
    return run_py((["tests/fault_runner.py", fault, "--"] if fault else ["train.py"]) + args, env=ENV)


def outcome(run_dir):
    """What must be identical: the prompt, the checkpoint, scores and losses (not the wall time)."""
    res = json.loads((run_dir / "results.json").read_text())
    res.pop("wall_time_s")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return (run_dir / "prompt.npy").read_bytes(), ckpt["prompt"].numpy().tobytes(), res


@pytest.fixture(scope="module")
def baseline(tiny_t5_dir, data_dir, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("baseline")
    proc = run(train_args(tiny_t5_dir, data_dir, save_dir, "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (save_dir / "run" / "train_state.pt").exists()  # removed once the run is complete
    return outcome(save_dir / "run")


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_identical(baseline, tiny_t5_dir, data_dir, tmp_path):
    rng = np.random.default_rng(2026)
    points = [f"kill_at_step:{s}" for s in sorted(rng.choice(np.arange(2, EPOCHS * STEPS_PER_EPOCH), 4, False))]
    points.append("kill_in_checkpoint:3")  # the third train_state.pt write dies before its rename
    assert len(set(points)) == 5

    def kill_and_resume(fault):
        name = fault.replace(":", "_")
        args = train_args(tiny_t5_dir, data_dir, tmp_path, name)
        killed = run(args, fault)
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr[-2000:])
        assert not (tmp_path / name / "prompt.npy").exists()  # it really died before the end
        resumed = run(args)
        assert resumed.returncode == 0, (fault, resumed.stderr[-2000:])
        return fault, resumed.stdout, outcome(tmp_path / name)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(kill_and_resume, points))
    for fault, stdout, got in results:
        assert got == baseline, fault
    # the kill during the checkpoint write left the previous checkpoint loadable: the run resumed from it
    stdout = dict((f, out) for f, out, _ in results)["kill_in_checkpoint:3"]
    assert "resuming" in stdout and "at epoch 0, step 10" in stdout  # writes at steps 5, 10; the one at 15 died


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_resumes_identically(baseline, tiny_t5_dir, data_dir, tmp_path):
    args = train_args(tiny_t5_dir, data_dir, tmp_path, "term")
    stopped = run(args, "term_at_step:23")
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert "SIGTERM received" in stopped.stderr and "run the same command again" in stopped.stderr
    state = torch.load(tmp_path / "term" / "train_state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 7)  # step 23 = epoch 1, its 7th batch, finished before exiting
    resumed = run(args)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout
    assert outcome(tmp_path / "term") == baseline


def start_until_checkpoint(cmd, run_dir, env=ENV, stdout=subprocess.PIPE):
    """Popen ``cmd`` (text pipes) and return it once ``run_dir``/train_state.pt exists (or the process ended)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run_dir / "train_state.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return proc


def signal_twice(args, tmp_path, name, first, second):
    """Start a run, wait for its first checkpoint, send two signals 10 ms apart; returns (exit code, stderr)."""
    state_file = tmp_path / name / "train_state.pt"
    proc = start_until_checkpoint([sys.executable, "train.py", *args], tmp_path / name)
    proc.send_signal(first)
    time.sleep(0.01)
    proc.send_signal(second)
    _, err = proc.communicate(timeout=300)
    torch.load(state_file, weights_only=True)  # still a whole, loadable checkpoint
    return proc.returncode, err


@pytest.mark.slow
def test_external_signals_from_outside_the_process(baseline, tiny_t5_dir, data_dir, tmp_path):
    """SLURM's SIGUSR1, then a second signal: exit at once with nothing torn; the run still resumes exactly."""
    args = train_args(tiny_t5_dir, data_dir, tmp_path, "usr1")
    rc, err = signal_twice(args, tmp_path, "usr1", signal.SIGUSR1, signal.SIGUSR1)
    assert rc == 75, err[-2000:]
    resumed = run(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert outcome(tmp_path / "usr1") == baseline


@pytest.mark.slow
def test_preemption_pair_of_signals_still_checkpoints(baseline, tiny_t5_dir, data_dir, tmp_path):
    """SLURM preemption: SIGTERM to train.py itself and, forwarded by scripts/requeue_on_signal.sh, SIGUSR1 right
    after. That pair is one request: the run stops at a step boundary with a fresh checkpoint (it says so on
    stderr) instead of exiting at once, and resumes exactly."""
    args = train_args(tiny_t5_dir, data_dir, tmp_path, "pair")
    rc, err = signal_twice(args, tmp_path, "pair", signal.SIGTERM, signal.SIGUSR1)
    assert rc == 75 and "the checkpoint is in" in err, err[-2000:]
    resumed = run(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert outcome(tmp_path / "pair") == baseline


@pytest.mark.slow
def test_nan_loss_stops_cleanly_and_keeps_the_last_good_state(tiny_t5_dir, data_dir, tmp_path):
    args = train_args(tiny_t5_dir, data_dir, tmp_path, "nan")
    proc = run(args, "nan_at_step:24")  # epoch 1, batch 8; checkpoints at global steps 5, 10, 16, 20, 25
    assert proc.returncode == 3
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "training loss became nan at epoch 1, step 7" in err[0] and "Traceback" not in proc.stderr
    state = torch.load(tmp_path / "nan" / "train_state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 4)  # the last good one: global step 20
    assert state["best"] is not None and state["best"]["projected_prompt"].shape == (10, 32)  # epoch 0 was scored
    assert all(np.isfinite(state["partial"]["losses"]))
    res = json.loads((tmp_path / "nan" / "results.json").read_text())
    assert res["complete"] is False and "nan" in res["error"] and len(res["validation"]) == 1


@pytest.mark.slow
def test_huge_learning_rate_diverges_with_a_clear_error(tiny_t5_dir, data_dir, tmp_path):
    args = train_args(tiny_t5_dir, data_dir, tmp_path, "lr") + ["--lr", "1e30", "--num_epochs", "1"]
    proc = run(args)
    assert proc.returncode == 3 and "lower --lr (now 1e+30)" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_refuses_other_arguments_and_never_mode(tiny_t5_dir, data_dir, tmp_path):
    args = train_args(tiny_t5_dir, data_dir, tmp_path, "r")
    assert run(args, "term_at_step:3").returncode == 75
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    other = run(args + ["--lr", "0.1"])
    assert other.returncode == 2 and "--lr 0.3 (saved) != 0.1 (now)" in other.stderr
    never = run(args + ["--resume", "never"])
    assert never.returncode == 2 and "--resume auto" in never.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
    # a finished run is left alone: the same command again does nothing
    assert run(args).returncode == 0
    done = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    again = run(args)
    assert again.returncode == 0 and "already complete" in again.stdout
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == done


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    import run_folder

    target = tmp_path / "f.json"
    run_folder.save_json(target, {"a": 1})

    def broken(f):
        f.write(b'{"a": 2')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        run_folder.atomic_write(str(target), broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary file left behind


@pytest.mark.slow
def test_sbatch_wrapper_forwards_slurms_signal_and_keeps_exit_75(baseline, tiny_t5_dir, data_dir, tmp_path):
    """scripts/requeue_on_signal.sh as an sbatch script runs it: SIGUSR1 to the wrapper reaches train.py."""
    args = train_args(tiny_t5_dir, data_dir, tmp_path, "wrap")
    proc = start_until_checkpoint(["bash", "scripts/requeue_on_signal.sh", sys.executable, "train.py", *args],
                                  tmp_path / "wrap", env={k: v for k, v in ENV.items() if not k.startswith("SLURM")})
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75 and "SIGUSR1 received" in err, err[-2000:]
    assert run(args).returncode == 0
    assert outcome(tmp_path / "wrap") == baseline


@pytest.mark.slow
def test_second_signal_during_shutdown_does_not_kill(tiny_t5_dir, data_dir, tmp_path):
    """The pair's second signal can land after the checkpoint is written, while Python shuts down (which resets
    Python-level handlers to the default action): it must not turn exit 75 into death by SIGUSR1 (-10)."""
    args = train_args(tiny_t5_dir, data_dir, tmp_path, "late")
    proc = start_until_checkpoint([sys.executable, "train.py", *args], tmp_path / "late", stdout=subprocess.DEVNULL)
    proc.send_signal(signal.SIGTERM)
    lines = []
    for line in proc.stderr:  # wait for the stop message: the run is past its last checkpoint and exiting
        lines.append(line)
        if "the checkpoint is in" in line:
            proc.send_signal(signal.SIGUSR1)
            break
    lines += proc.stderr.readlines()
    proc.wait(timeout=300)
    assert proc.returncode == 75, "".join(lines)[-2000:]
    torch.load(tmp_path / "late" / "train_state.pt", weights_only=True)
