"""scripts/rerun_record.py: a committed record rerun bit for bit, and a changed number found."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_py

pytestmark = pytest.mark.slow


def test_rerun_reproduces_a_record_and_names_a_changed_number(tiny_t5_anywhere, fixture_data_dir, tmp_path):
    run = ["train.py", "--task", "cb", "--data_dir", str(fixture_data_dir), "--model_name", str(tiny_t5_anywhere),
           "--prefix_MLP", "MLP1", "--freeze_weights", "1", "--num_epochs", "1", "--batch_size", "4",
           "--get_test_subset", "1", "--early_stopping", "1", "--save_dir", str(tmp_path), "--save_name", "rec",
           "--save_adapter", "0"]
    assert run_py(run, env={"OMP_NUM_THREADS": "1"}).returncode == 0
    record = tmp_path / "rec"
    ok = run_py(["scripts/rerun_record.py", str(record), "--model_name", str(tiny_t5_anywhere), "--baseline",
                 str(ROOT), "--keep", str(tmp_path / "again")])
    assert ok.returncode == 0, ok.stderr[-1500:]
    assert "identical" in ok.stdout and "number-neutral" in ok.stdout

    import importlib.util

    spec = importlib.util.spec_from_file_location("rerun_record", ROOT / "scripts" / "rerun_record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads((record / "results.json").read_text())
    rerun = json.loads((tmp_path / "again" / "rerun" / "results.json").read_text())
    assert module.differences(results, rerun) == []
    results["validation"][0]["loss"] += 1e-9  # one recorded number off by a rounding error
    assert [d.split(":")[0] for d in module.differences(results, rerun)] == [".validation[0].loss"]
