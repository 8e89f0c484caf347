"""scripts/sweep.py run SWEEP SELECTION -j N: a sweep on this machine without SLURM. Three tiny runs, two at a time,
complete; a rerun skips them all and changes no file; failing runs make the sweep exit non-zero with their error."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]
SWEEP_PY = ROOT / "scripts" / "sweep.py"


def write_sweep(path, model, data, save_dir, seeds=(1, 2, 3)):
    path.write_text(json.dumps({
        "name": "local_tiny",
        "fixed": {"task": "cb", "model_name": str(model), "data_dir": str(data), "save_dir": str(save_dir),
                  "prefix_MLP": "MLP1", "freeze_weights": 1, "num_epochs": 1, "batch_size": 4, "seq_len": 64,
                  "limit_val_set": 2, "device": "cpu", "progress": 0},
        "grid": {"seed": list(seeds)}}))
    return path


def snapshot(folder):
    """Every file under ``folder``: its bytes and mtime (a rerun that is a no-op changes neither)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def sweep_lines(out, word):
    return [ln for ln in out.splitlines() if ln.startswith(f"sweep.py: {word} ")]


@pytest.mark.parametrize("text, n, expected", [
    ("all", 4, [0, 1, 2, 3]), ("2", 4, [2]), ("0-2", 4, [0, 1, 2]), ("3,0-1,1", 4, [3, 0, 1]),
    (" all ", 2, [0, 1]), ("1-1", 3, [1]),
])
def test_selection(sweep, text, n, expected):
    assert sweep.parse_selection(text, n) == expected


@pytest.mark.parametrize("text, message", [
    ("4", "index 4 is out of range: the sweep has 4 runs (0-3)"), ("0-9", "index 9 is out of range"),
    ("3-1", "runs backwards"), ("x", "expected all, an index, a range A-B"), ("1,,2", "expected all"),
])
def test_bad_selection(sweep, text, message):
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
        sweep.parse_selection(text, 4)


@pytest.mark.slow
def test_three_runs_two_at_a_time_then_a_rerun_is_a_no_op(tiny_t5_anywhere, fixture_data_dir, tmp_path):
    save_dir, logs = tmp_path / "runs", tmp_path / "logs"
    path = write_sweep(tmp_path / "tiny.json", tiny_t5_anywhere, fixture_data_dir, save_dir)
    res = run_py([SWEEP_PY, "run", path, "all", "-j", "2", "--logs", logs])
    assert res.returncode == 0, res.stdout + res.stderr
    names = [f"cb-len10-lr0.3-seed{s}" for s in (1, 2, 3)]
    starts, dones = sweep_lines(res.stdout, "start"), sweep_lines(res.stdout, "done")
    assert [ln.split()[2:4] for ln in starts] == [[str(i), f"{n}:"] for i, n in enumerate(names)]
    assert sorted(ln.split()[2:6] for ln in dones) == [[str(i), f"{n}:", "exit", "0"] for i, n in enumerate(names)]
    assert res.stdout.splitlines()[-1] == "sweep.py: local_tiny: 3 done, 0 skipped (complete), 0 failed"
    # two at a time: the third run starts only after one of the first two has finished
    lines = res.stdout.splitlines()
    third = lines.index(starts[2])
    assert lines.index(starts[1]) < next(lines.index(d) for d in dones) < third
    for i, name in enumerate(names):
        results = json.loads((save_dir / name / "results.json").read_text())
        assert results["complete"] is True and results["n_examples"]["validation"] > 0
        assert f"sweep.py run {i} {name}" in (logs / f"{i}.log").read_text()

    before = snapshot(tmp_path)
    again = run_py([SWEEP_PY, "run", path, "0-2", "-j", "2", "--logs", logs])
    assert again.returncode == 0, again.stdout + again.stderr
    assert [ln.split()[2:5] for ln in sweep_lines(again.stdout, "skip")] == [
        [str(i), f"{n}:", "complete"] for i, n in enumerate(names)]
    assert not sweep_lines(again.stdout, "start")
    assert again.stdout.splitlines()[-1] == "sweep.py: local_tiny: 0 done, 3 skipped (complete), 0 failed"
    assert snapshot(tmp_path) == before  # nothing written, not even a log line

    status = run_py([SWEEP_PY, "status", path])
    assert status.stdout.strip() == "local_tiny: 3 runs: 3 complete, 0 partial, 0 missing"


@pytest.mark.slow
def test_failed_runs_make_the_sweep_fail_and_say_why(fixture_data_dir, tmp_path):
    path = write_sweep(tmp_path / "bad.json", tmp_path / "no_such_model", fixture_data_dir, tmp_path / "runs",
                       seeds=(1, 2))
    res = run_py([SWEEP_PY, "run", path, "all", "-j", "2", "--logs", tmp_path / "logs"])
    assert res.returncode == 1, res.stdout + res.stderr
    failed = sweep_lines(res.stdout, "FAILED")
    assert len(failed) == 2 and all("exit 2 (bad input)" in ln and "no_such_model" in ln for ln in failed), failed
    assert res.stdout.splitlines()[-1] == "sweep.py: local_tiny: 0 done, 0 skipped (complete), 2 failed"


@pytest.mark.slow
def test_bad_selection_from_the_command_line(tmp_path, fixture_data_dir):
    path = write_sweep(tmp_path / "s.json", tmp_path / "m", fixture_data_dir, tmp_path / "runs")
    res = run_py([SWEEP_PY, "run", path, "1-5", "-j", "2"])
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "sweep.py: error: index 5 is out of range: the sweep has 3 runs (0-2)\n"
    assert not (tmp_path / "runs").exists()


def test_gpus_are_shared_out_one_run_each(sweep, tmp_path, monkeypatch):
    """--gpus 0,1: each run starts with CUDA_VISIBLE_DEVICES of the GPU with the fewest runs on it; without --gpus
    the CPU threads are split among the runs at a time (OMP_NUM_THREADS, unless it is set)."""
    started = []

    class FakePopen:
        def __init__(self, argv, env, **kw):
            started.append(env)
            self.rc = None

        def poll(self):
            return self.rc

    monkeypatch.setattr(sweep.subprocess, "Popen", FakePopen)
    runs = [{"name": f"r{i}", "argv": ["--task", "cb", "--save_name", f"r{i}"]} for i in range(3)]
    local = sweep.LocalSweep(runs, [0, 1, 2], "t", 2, ["0", "1"], str(tmp_path / "logs"))
    local._start(0)
    local._start(1)
    local.running[0][0].rc = 0
    local._finish(0, 0)
    local._start(2)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == ["0", "1", "0"]

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep, "_cpus", lambda: 16)
    env = sweep.LocalSweep(runs, [0, 1, 2], "t", 4, None, "x")._env(None)
    assert env["OMP_NUM_THREADS"] == "5"  # 16 cores // 3 runs at a time (-j 4, but only 3 selected)
    assert sweep.LocalSweep(runs, [0, 1, 2], "t", 2, None, "x")._env(None)["OMP_NUM_THREADS"] == "8"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert sweep.LocalSweep(runs, [0], "t", 4, None, "x")._env(None)["OMP_NUM_THREADS"] == "2"


@pytest.mark.slow
def test_a_killed_sweep_stops_its_runs_with_a_checkpoint(tiny_t5_anywhere, fixture_data_dir, tmp_path):
    """kill -9 of `sweep.py run`: its train.py (a session of its own, so no terminal signal reaches it) gets SIGTERM
    from the kernel (PR_SET_PDEATHSIG), checkpoints at the next step boundary and exits: no run trains on unseen."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import run_files

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    save_dir, logs = tmp_path / "runs", tmp_path / "logs"
    spec = json.loads(write_sweep(tmp_path / "long.json", tiny_t5_anywhere, fixture_data_dir, save_dir,
                                  seeds=(1,)).read_text())
    spec["fixed"].update(num_epochs=500, batch_size=2)  # minutes of training: it must be stopped, not finish
    (tmp_path / "long.json").write_text(json.dumps(spec))
    sweep_proc = subprocess.Popen([sys.executable, str(SWEEP_PY), "run", str(tmp_path / "long.json"), "all",
                                   "--logs", str(logs)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = save_dir / "cb-len10-lr0.3-seed1"
    holder, deadline = None, time.time() + 300
    while time.time() < deadline and not ((run / run_files.METRICS_LOG).exists() and holder):  # in the loop
        holder = run_files.lock_holder(str(run))
        time.sleep(0.2)
    assert holder, "the run never started"
    pid = int(holder.split()[1])  # "pid N on host H"
    sweep_proc.kill()
    sweep_proc.wait(timeout=60)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"train.py (pid {pid}) kept running after its sweep was killed")
    log = (logs / "0.log").read_text()
    assert "SIGTERM received" in log, log[-2000:]
    assert (run / run_files.TRAIN_STATE).exists(), log[-2000:]  # the checkpoint the same command continues from
    assert not run_files.is_complete(run_files.read_json(str(run / run_files.RESULTS)) or {},
                                     run_files.read_json(str(run / run_files.ARGS)))
    assert run_files.lock_holder(str(run)) is None
