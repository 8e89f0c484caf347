"""scripts/gpu_check.sh runs end to end without a GPU: --device cpu --quick (tiny model, 1 epoch; the gpu tests
skip) writes its one JSON with every figure, to $OUT/gpu_check.json."""
import json
import os
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_quick_and_writes_its_json(data_dir, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "RPT_DATA_DIR": str(data_dir), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["ok"] and out["problems"] == [] and out["device"] == "cpu" and out["quick"]
    assert out["shape"] == "tiny" and out["cb_epochs"] == 1
    assert {name: s["status"] for name, s in out["steps"].items()} == {
        "make_model": "ok", "gpu_tests": "ok", "cb_fp32": "ok", "cb_fp32_flops": "ok", "benchmark": "ok"}
    tests = out["gpu_tests"]
    assert tests["failure"] == tests["error"] == 0 and tests["skipped"] == len(tests["cases"]) > 5  # no CUDA here
    run = out["cb_runs"]["cb_fp32"]
    assert run["complete"] and len(run["validation_scores"]) == 1 and run["n_examples"]["train"] == 250
    flops = run["flops"]
    assert flops["epochs"] == 1 and flops["validations"] == 1 and flops["train_flops_per_epoch"] > 0
    assert flops["eval_flops_per_validation"] > 0 and flops["matmul_dtype"] == "float32"
    assert 0 < run["mfu"] < 1 and run["mfu"] == pytest.approx(flops["total_flops"] / flops["wall_time_s"]
                                                              / flops["matmul_flops_per_s"])
    bench = out["benchmark"]
    assert set(bench["tasks"][0]["rows"]) == {"original", "ours"}
    assert bench["eval_compare"]["same_predictions"] and bench["eval_compare"]["rows"] == 16
    assert "== summary: OK" in proc.stdout
