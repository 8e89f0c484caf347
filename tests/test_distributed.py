"""torchrun with 2 CPU processes (gloo) gives the 1-process run's losses, prompt and scores; --fsdp 1 too."""
import json
import os
import socket

import numpy as np
import pytest

from conftest import run_py

pytestmark = pytest.mark.slow  # every test here starts train.py or torchrun


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, args):
    return run_py(["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                   "--master_port", str(free_port()), "train.py", *args],
                  env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def runs(tiny_t5_dir, data_dir, tmp_path_factory):
    """RTE, 5 rows per class (10 rows), batch 3: the last batch has one row, so the second rank gets none of it.
    The frozen model's dropout is off: ranks draw their own dropout masks, so with it on no two process counts
    can match exactly."""
    save_dir = tmp_path_factory.mktemp("dist")
    common = ["--task", "rte_superglue", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
              "--prefix_MLP", "MLP1", "--freeze_weights", "1", "--select_k_per_class", "5", "--batch_size", "3",
              "--eval_batch_size", "8", "--num_epochs", "2", "--get_test_subset", "1", "--early_stopping", "1",
              "--model_dropout", "0", "--progress", "0", "--save_dir", str(save_dir)]
    out = {}
    for name, nproc, extra in (("one", 1, []), ("two", 2, []), ("fsdp", 2, ["--fsdp", "1"])):
        proc = torchrun(nproc, common + ["--save_name", name] + extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = save_dir / name
        out[name] = {"results": json.loads((run_dir / "results.json").read_text()),
                     "prompt": np.load(run_dir / "prompt.npy"), "files": sorted(os.listdir(run_dir)),
                     "stdout": proc.stdout}
    return out


@pytest.mark.parametrize("name", ["two", "fsdp"])
def test_two_processes_follow_the_one_process_run(runs, name):
    one, two = runs["one"]["results"], runs[name]["results"]
    assert one["world_size"] == 1 and two["world_size"] == 2
    for a, b in zip(one["train"]["step_losses"], two["train"]["step_losses"]):
        assert len(a) == len(b) == 4  # ceil(10 / 3)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=0)
    p1, p2 = runs["one"]["prompt"], runs[name]["prompt"]
    assert np.linalg.norm(p2 - p1) / np.linalg.norm(p1) < 1e-5
    for split in ("validation", "test"):
        a, b = (one[split][-1], two[split][-1]) if split == "validation" else (one[split], two[split])
        assert b["metric"] == a["metric"]  # every example scored exactly once: the same counts
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert one["n_examples"] == two["n_examples"]


def test_only_rank_zero_writes_and_prints(runs):
    assert runs["two"]["files"] == runs["one"]["files"]
    assert runs["two"]["stdout"].count("done: rte_superglue") == 1


@pytest.mark.parametrize("argv, env, message", [
    (["--fsdp", "1"], {}, "--fsdp 1 shards the model over several processes"),
    (["--train_eval_batches", "5"], {"WORLD_SIZE": "2"}, "not supported with several processes"),
    (["--fsdp", "1", "--freeze_weights", "0"], {"WORLD_SIZE": "2"}, "--fsdp 1 is for a frozen model"),
])
def test_distributed_options_refused_where_they_cannot_act(tmp_path, argv, env, message):
    proc = run_py(["train.py", "--task", "cb", "--save_dir", str(tmp_path), "--save_name", "x", *argv], env=env)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
