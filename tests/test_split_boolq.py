"""scripts/split_boolq.py: a BoolQ training set cut from the validation file, disjoint, reproducible, readable."""
import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_py
from data_utils import TASKS, load_split

pytestmark = pytest.mark.slow  # every test here runs scripts/split_boolq.py in a child process

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "split_boolq.py"


def write_val(root, n=11):
    folder = Path(root) / "super_glue" / "BoolQ"
    folder.mkdir(parents=True)
    rows = [{"question": f"is {i} even", "passage": f"number {i}", "idx": i, "label": i % 2 == 0} for i in range(n)]
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def split(*args):
    return run_py([SCRIPT, *args])


def idx(path):
    return [json.loads(line)["idx"] for line in Path(path).read_text().splitlines()]


def test_halves_are_disjoint_cover_every_row_and_repeat(tmp_path):
    write_val(tmp_path / "data", n=11)
    assert split("--data_dir", tmp_path / "data", "--out", tmp_path / "a").returncode == 0
    train, val = idx(tmp_path / "a/BoolQ/train.jsonl"), idx(tmp_path / "a/BoolQ/val.jsonl")
    assert len(train) == 6 and len(val) == 5  # round(0.5 * 11)
    assert not set(train) & set(val) and sorted(train + val) == list(range(11))
    assert split("--data_dir", tmp_path / "data", "--out", tmp_path / "b").returncode == 0
    assert idx(tmp_path / "b/BoolQ/train.jsonl") == train  # same seed, same split
    assert split("--data_dir", tmp_path / "data", "--out", tmp_path / "c", "--seed", 1).returncode == 0
    assert idx(tmp_path / "c/BoolQ/train.jsonl") != train


def test_our_loader_reads_the_split_as_boolq(tmp_path):
    write_val(tmp_path / "data", n=8)
    assert split("--data_dir", tmp_path / "data", "--out", tmp_path / "out", "--train_fraction", 0.25).returncode == 0
    train = load_split(TASKS["boolq"], "train", str(tmp_path / "out"))
    val = load_split(TASKS["boolq"], "validation", str(tmp_path / "out"))
    assert len(train) == 2 and len(val) == 6
    assert {r["label"] for r in train + val} <= {0, 1}
    assert sorted(r["idx"] for r in train + val) == list(range(8))


def test_refuses_to_replace_an_earlier_split(tmp_path):
    write_val(tmp_path / "data")
    assert split("--data_dir", tmp_path / "data", "--out", tmp_path / "out").returncode == 0
    before = hashlib.sha256((tmp_path / "out/BoolQ/train.jsonl").read_bytes()).hexdigest()
    again = split("--data_dir", tmp_path / "data", "--out", tmp_path / "out", "--seed", 5)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert hashlib.sha256((tmp_path / "out/BoolQ/train.jsonl").read_bytes()).hexdigest() == before
    assert split("--data_dir", tmp_path / "data", "--out", tmp_path / "out", "--seed", 5, "--overwrite").returncode == 0


def test_bad_inputs_are_one_line_errors(tmp_path):
    missing = split("--data_dir", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert missing.returncode == 2 and "no BoolQ/val.jsonl" in missing.stderr
    write_val(tmp_path / "data")
    frac = split("--data_dir", tmp_path / "data", "--out", tmp_path / "out", "--train_fraction", 1.5)
    assert frac.returncode == 2 and "--train_fraction" in frac.stderr
    assert not (tmp_path / "out").exists()
