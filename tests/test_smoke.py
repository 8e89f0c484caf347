"""One train.py run on the tiny T5 and the CB rows committed in tests/fixtures: runs anywhere (no ../shared), in this
process, in seconds. The real-data runs of train.py are in test_cli.py."""
import json
import math

import numpy as np

import train


def test_train_py_on_the_fixture_writes_results_json(tiny_t5_anywhere, fixture_data_dir, tmp_path):
    code = train.main(["--task", "cb", "--data_dir", str(fixture_data_dir), "--model_name", str(tiny_t5_anywhere),
                       "--prefix_MLP", "MLP1", "--freeze_weights", "1", "--early_stopping", "1",
                       "--get_test_subset", "1", "--num_epochs", "2", "--save_dir", str(tmp_path), "--save_name", "x",
                       "--progress", "0"])
    assert code == 0
    res = json.loads((tmp_path / "x" / "results.json").read_text())
    assert res["complete"] is True and res["task"] == "cb"
    assert res["n_examples"] == {"train": 20, "validation": 5, "test": 5}  # validation's 10 rows cut in half
    assert [e["epoch"] for e in res["validation"]] == [0, 1]
    for e in res["validation"] + [res["test"]]:
        assert math.isfinite(e["loss"]) and 0 <= e["score"] <= 1
    assert res["trainable_params"]["model"] == 0 and res["trainable_params"]["prompt"] == 10 * 32
    assert np.load(tmp_path / "x" / "prompt.npy").shape == (10, 32)
